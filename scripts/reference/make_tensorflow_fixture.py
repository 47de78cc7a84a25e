"""Writes crates/retrain-tfrecord/tests/fixtures/tensorflow.tfrecord with TensorFlow itself:
two image examples with build_image_data.py's nine features, the JPEGs made by tf.io.encode_jpeg
(quality 100, TensorFlow's default 4:2:0 chroma) from 8×6 and 5×9 gradients, serialized by
TensorFlow's C++ protobuf (whose map order is not sorted) and framed by tf.io.TFRecordWriter.

usage: target/tf-venv/bin/python make_tensorflow_fixture.py OUT_FILE
(TensorFlow is not in the interop virtualenv; `pip install tensorflow-cpu` into target/tf-venv.)
"""

import sys

import numpy as np
import tensorflow as tf


def feature_int(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))


def feature_bytes(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def main():
    with tf.io.TFRecordWriter(sys.argv[1]) as writer:
        for label, (text, width, height) in enumerate([("cat", 8, 6), ("dog", 5, 9)], start=1):
            y, x = np.mgrid[0:height, 0:width]
            pixels = np.stack([x * 30, y * 25, np.full_like(x, 200)], axis=-1).astype(np.uint8)
            jpeg = tf.io.encode_jpeg(pixels, format="rgb", quality=100).numpy()
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image/height": feature_int(height),
                        "image/width": feature_int(width),
                        "image/colorspace": feature_bytes(b"RGB"),
                        "image/channels": feature_int(3),
                        "image/class/label": feature_int(label),
                        "image/class/text": feature_bytes(text.encode()),
                        "image/format": feature_bytes(b"JPEG"),
                        "image/filename": feature_bytes(f"{text}_s_{label:06d}.png".encode()),
                        "image/encoded": feature_bytes(jpeg),
                    }
                )
            )
            writer.write(example.SerializeToString())
    print(f"TensorFlow {tf.__version__} wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
