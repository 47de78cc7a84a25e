"""Writes the fixtures of retrain-tfrecord's tests with Python's own protobuf classes and writers,
so the Rust side is checked against an independent implementation.

usage: make_tfrecord_fixtures.py OUT_DIR

- example.pb: one tf.train.Example with build_image_data.py's nine features (fixed values below),
  serialized with map keys sorted (deterministic=True), as our encoder must write it.
- event-file-version.pb, event-scalars.pb: a TensorBoard Event of each kind we write.
- python.tfrecord: three Examples written by the `tfrecord` package's TFRecordWriter (bytes, int64
  and float lists; one value and several), for the reader.
- tensorboard.tfevents: an event file written by TensorBoard's own EventFileWriter (file version
  event, then two scalar events).

The golden values are repeated in crates/retrain-tfrecord/tests/golden.rs and scripts/check_tfrecord.py.
"""

import glob
import os
import shutil
import sys
import tempfile

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tfrecord import example_pb2
from tfrecord.writer import TFRecordWriter

GOLDEN_IMAGE = {
    "image/encoded": b"\xff\xd8\xff\xe0golden-jpeg-bytes\xff\xd9",
    "image/height": 32,
    "image/width": 24,
    "image/colorspace": b"RGB",
    "image/channels": 3,
    "image/class/label": 4,
    "image/class/text": b"cat",
    "image/format": b"JPEG",
    "image/filename": b"tabby_cat_s_000123.png",
}


def golden_example():
    feature = {}
    for key, value in GOLDEN_IMAGE.items():
        if isinstance(value, int):
            feature[key] = example_pb2.Feature(int64_list=example_pb2.Int64List(value=[value]))
        else:
            feature[key] = example_pb2.Feature(bytes_list=example_pb2.BytesList(value=[value]))
    return example_pb2.Example(features=example_pb2.Features(feature=feature))


def golden_events():
    first = event_pb2.Event(wall_time=1700000000.25, file_version="brain.Event:2")
    scalars = event_pb2.Event(
        wall_time=1700000001.5,
        step=10,
        summary=summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag="loss", simple_value=0.25),
                summary_pb2.Summary.Value(tag="accuracy", simple_value=0.875),
            ]
        ),
    )
    return first, scalars


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "example.pb"), "wb") as f:
        f.write(golden_example().SerializeToString(deterministic=True))
    first, scalars = golden_events()
    with open(os.path.join(out, "event-file-version.pb"), "wb") as f:
        f.write(first.SerializeToString(deterministic=True))
    with open(os.path.join(out, "event-scalars.pb"), "wb") as f:
        f.write(scalars.SerializeToString(deterministic=True))

    writer = TFRecordWriter(os.path.join(out, "python.tfrecord"))
    writer.write({"name": (b"first", "byte"), "label": (1, "int"), "score": (0.5, "float")})
    writer.write(
        {
            "name": ([b"second", b"two"], "byte"),
            "label": ([-2, 300], "int"),
            "score": ([1.5, -0.25, 3.0], "float"),
        }
    )
    writer.write({"image/class/label": (3, "int"), "image/class/text": (b"frog", "byte")})
    writer.close()

    with tempfile.TemporaryDirectory() as tmp:
        events = EventFileWriter(tmp)
        events.add_event(event_pb2.Event(step=1, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag="loss", simple_value=2.5)])))
        events.add_event(event_pb2.Event(step=2, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag="loss", simple_value=1.25)])))
        events.close()
        (path,) = glob.glob(os.path.join(tmp, "events.out.tfevents.*"))
        shutil.copyfile(path, os.path.join(out, "tensorboard.tfevents"))


if __name__ == "__main__":
    main()
