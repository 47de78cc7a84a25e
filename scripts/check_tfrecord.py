"""Cross-checks retrain-tfrecord with independent Python readers. Exits non-zero on the first
mismatch.

usage:
  check_tfrecord.py make-tree DIR
      Writes DIR/train_dir/<class>/*, DIR/validation_dir/<class>/*, DIR/labels.txt with Pillow:
      PNGs in every mode a sorter might write (RGB, RGBA, L, LA, P), sizes 1 to 48, JPEGs (colour
      and grey, passed through), a broken PNG and a text file (skipped), a non-ASCII name.
  check_tfrecord.py check-build TREE OUT
      Reads every shard in OUT with TensorBoard's record reader (which verifies both CRC-32Cs) and
      the `tfrecord` package's reader, parses each record with protobuf's tf.train.Example, and
      checks every feature against the image folders: 1-based labels in labels.txt order, class
      text, file name, size, channels, colorspace, format, the JPEG decoded by Pillow against the
      PNG within quality-100 tolerance (JPEG files byte-identical), every file exactly once, and
      the counts of report.json and manifest.json.
  check_tfrecord.py check-golden FIXTURES
      Parses the golden Example and Event bytes with protobuf, checks their values, and compares
      protobuf's deterministic re-serialisation with the bytes.
  check_tfrecord.py check-events DIR
      Loads our event file in DIR with TensorBoard's EventFileLoader and EventAccumulator.
"""

import glob
import io
import json
import os
import random
import sys

from PIL import Image, ImageChops, ImageStat
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tfrecord import example_pb2
from tfrecord.reader import tfrecord_iterator

CLASSES = ["airplane", "chat_été", "frog", "ship"]
KEYS = {
    "image/height": "int64_list",
    "image/width": "int64_list",
    "image/colorspace": "bytes_list",
    "image/channels": "int64_list",
    "image/class/label": "int64_list",
    "image/class/text": "bytes_list",
    "image/format": "bytes_list",
    "image/filename": "bytes_list",
    "image/encoded": "bytes_list",
}
# Quality-100 JPEG without chroma subsampling against the PNG it came from.
MAX_DIFF = 6
MAX_MEAN_DIFF = 1.0


def fail(msg):
    sys.exit(f"check_tfrecord: {msg}")


def expect(cond, msg):
    if not cond:
        fail(msg)


def picture(rng, width, height):
    img = Image.new("RGB", (width, height))
    px = img.load()
    base = [rng.randrange(256) for _ in range(3)]
    for y in range(height):
        for x in range(width):
            px[x, y] = (
                (base[0] + 7 * x) % 256,
                (base[1] + 11 * y) % 256,
                (base[2] + rng.randrange(40)) % 256,
            )
    return img


def make_tree(root):
    rng = random.Random(5)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(CLASSES) + "\n")
    modes = ["RGB", "RGBA", "L", "LA", "P"]
    for split, per_class in [("train_dir", 14), ("validation_dir", 5)]:
        for c, name in enumerate(CLASSES):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                w, h = rng.randrange(1, 49), rng.randrange(1, 49)
                img = picture(rng, w, h)
                mode = modes[(c + i) % len(modes)]
                if mode == "P":
                    img = img.quantize(colors=64)
                elif mode != "RGB":
                    img = img.convert(mode)
                img.save(os.path.join(folder, f"{name}_s_{i:04d}.png"), format="PNG")
            jpeg = picture(rng, 20, 12)
            jpeg.save(os.path.join(folder, f"{name}_photo.jpg"), format="JPEG", quality=90)
            jpeg.convert("L").save(os.path.join(folder, f"{name}_grey.jpeg"), format="JPEG")
        with open(os.path.join(root, split, CLASSES[2], "broken.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
        with open(os.path.join(root, split, CLASSES[3], "notes.txt"), "w") as f:
            f.write("not an image\n")


def read_records(path):
    """Every record, read twice: TensorBoard's reader checks the CRCs; `tfrecord`'s must agree."""
    reader = pywrap_tensorflow.PyRecordReader_New(path.encode(), 0, b"", None)
    checked = []
    while True:
        try:
            reader.GetNext()
        except Exception as e:  # OutOfRangeError at the end; DataLossError on a bad CRC
            if type(e).__name__ != "OutOfRangeError":
                fail(f"{path}: {e}")
            break
        checked.append(bytes(reader.record()))
    plain = [bytes(r) for r in tfrecord_iterator(path)]
    expect(checked == plain, f"{path}: the two readers disagree")
    return checked


def one(feature, kind):
    expect(feature.WhichOneof("kind") == kind, f"feature is {feature.WhichOneof('kind')}, not {kind}")
    values = list(getattr(feature, kind).value)
    expect(len(values) == 1, f"{len(values)} values")
    return values[0]


def mean_and_max_diff(a, b):
    diff = ImageChops.difference(a, b)
    mean = sum(ImageStat.Stat(diff).mean) / 3
    biggest = max(hi for _, hi in diff.getextrema())
    return mean, biggest


def check_build(tree, out):
    with open(os.path.join(tree, "labels.txt"), encoding="utf-8") as f:
        labels = [line.strip() for line in f if line.strip()]
    with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    expect(manifest["stage"] == "tfrecord", "manifest stage")
    n_records = 0
    worst = (0.0, 0)
    for split, prefix in [("train_dir", "train"), ("validation_dir", "validation")]:
        shards = sorted(glob.glob(os.path.join(out, f"{prefix}-*")))
        n_shards = int(manifest["params"][f"{prefix}-shards"])
        expected_names = [f"{prefix}-{i:05d}-of-{n_shards:05d}" for i in range(n_shards)]
        expect([os.path.basename(s) for s in shards] == expected_names, f"{prefix} shard names {shards}")
        split_report = report["splits"][prefix]
        seen = {}
        for shard, shard_report in zip(shards, split_report["shards"]):
            records = read_records(shard)
            expect(len(records) == shard_report["records"], f"{shard}: {len(records)} records")
            for raw in records:
                example = example_pb2.Example.FromString(raw)
                expect(
                    example.SerializeToString(deterministic=True) == raw,
                    f"{shard}: our encoding is not protobuf's deterministic one",
                )
                feature = example.features.feature
                expect(set(feature.keys()) == set(KEYS), f"{shard}: keys {sorted(feature.keys())}")
                get = {key: one(feature[key], kind) for key, kind in KEYS.items()}
                text = get["image/class/text"].decode("utf-8")
                name = get["image/filename"].decode("utf-8")
                where = f"{shard}: {text}/{name}"
                expect(text in labels, f"{where}: unknown class")
                expect(get["image/class/label"] == labels.index(text) + 1, f"{where}: label {get['image/class/label']}")
                expect(get["image/channels"] == 3, f"{where}: channels")
                expect(get["image/colorspace"] == b"RGB", f"{where}: colorspace")
                expect(get["image/format"] == b"JPEG", f"{where}: format")
                source = os.path.join(tree, split, text, name)
                expect(os.path.isfile(source), f"{where}: no such source file")
                key = f"{text}/{name}"
                expect(key not in seen, f"{where}: written twice")
                seen[key] = True
                original = Image.open(source)
                expect(
                    (get["image/width"], get["image/height"]) == original.size,
                    f"{where}: size {get['image/width']}x{get['image/height']}, file {original.size}",
                )
                decoded = Image.open(io.BytesIO(get["image/encoded"]))
                expect(decoded.format == "JPEG", f"{where}: encoded is {decoded.format}")
                expect(decoded.size == original.size, f"{where}: decoded size {decoded.size}")
                if original.format == "JPEG":
                    with open(source, "rb") as f:
                        expect(f.read() == get["image/encoded"], f"{where}: JPEG not passed through")
                    continue
                expect(decoded.mode == "RGB", f"{where}: decoded mode {decoded.mode}")
                mean, biggest = mean_and_max_diff(original.convert("RGB"), decoded.convert("RGB"))
                expect(
                    mean <= MAX_MEAN_DIFF and biggest <= MAX_DIFF,
                    f"{where} ({original.mode}): mean difference {mean:.2f}, max {biggest}",
                )
                worst = (max(worst[0], mean), max(worst[1], biggest))
                n_records += 1
        skipped = {s["path"] for s in split_report["skipped_files"]}
        for c, text in enumerate(labels):
            folder = os.path.join(tree, split, text)
            names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
            class_report = split_report["classes"][c]
            expect(class_report["label"] == c + 1 and class_report["name"] == text, f"report class {c}")
            expect(class_report["files"] == len(names), f"{prefix}/{text}: report files")
            for n in names:
                key = f"{text}/{n}"
                expect((key in seen) != (key in skipped), f"{prefix}: {key} neither written nor skipped once")
            expect(
                class_report["records"] == sum(1 for n in names if f"{text}/{n}" in seen),
                f"{prefix}/{text}: report records",
            )
        expect(split_report["records"] == len(seen), f"{prefix}: report records")
        expect(split_report["skipped"] == len(skipped), f"{prefix}: report skipped")
    print(
        f"check_tfrecord: every shard of {out} checks out; {n_records} re-encoded images differ "
        f"from their PNG by at most {worst[1]} (mean at most {worst[0]:.2f})"
    )


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


def check_golden(fixtures):
    with open(os.path.join(fixtures, "example.pb"), "rb") as f:
        raw = f.read()
    example = example_pb2.Example.FromString(raw)
    expect(example.SerializeToString(deterministic=True) == raw, "example.pb: not the deterministic encoding")
    feature = example.features.feature
    expect(set(feature.keys()) == set(GOLDEN_IMAGE), "example.pb: keys")
    for key, value in GOLDEN_IMAGE.items():
        got = one(feature[key], "int64_list" if isinstance(value, int) else "bytes_list")
        expect(got == value, f"example.pb: {key} = {got!r}")
    with open(os.path.join(fixtures, "event-file-version.pb"), "rb") as f:
        raw = f.read()
    event = event_pb2.Event.FromString(raw)
    expect(event.SerializeToString(deterministic=True) == raw, "event-file-version.pb: re-encoding")
    expect(event.wall_time == 1700000000.25 and event.file_version == "brain.Event:2", f"{event}")
    with open(os.path.join(fixtures, "event-scalars.pb"), "rb") as f:
        raw = f.read()
    event = event_pb2.Event.FromString(raw)
    expect(event.SerializeToString(deterministic=True) == raw, "event-scalars.pb: re-encoding")
    values = [(v.tag, v.simple_value) for v in event.summary.value]
    expect(
        (event.wall_time, event.step, values) == (1700000001.5, 10, [("loss", 0.25), ("accuracy", 0.875)]),
        f"{event}",
    )
    print("check_tfrecord: golden Example and Event bytes are protobuf's")


def check_events(directory):
    (path,) = glob.glob(os.path.join(directory, "events.out.tfevents.*"))
    name = os.path.basename(path).split(".")
    expect(len(name[3]) == 10 and name[3].isdigit(), f"{path}: seconds in the name")
    events = list(EventFileLoader(path).Load())
    expect(events[0].file_version == "brain.Event:2", f"first event {events[0]}")
    steps = list(range(0, 101, 10))
    scalars = [e for e in events[1:] if e.HasField("summary")]
    expect(len(scalars) == 2 * len(steps), f"{len(scalars)} scalar events")
    acc = event_accumulator.EventAccumulator(directory)
    acc.Reload()
    expect(
        sorted(acc.Tags()["scalars"]) == ["accuracy", "loss", "lr"], f"tags {acc.Tags()['scalars']}"
    )
    loss = acc.Scalars("loss")
    expect([s.step for s in loss] == steps, f"loss steps {[s.step for s in loss]}")
    for s in loss:
        want = 2.0 / (1.0 + s.step / 10.0)
        expect(abs(s.value - want) < 1e-6, f"loss at {s.step}: {s.value}, expected {want}")
    expect(all(abs(s.value - 0.001) < 1e-9 for s in acc.Scalars("lr")), "lr values")
    expect(all(s.wall_time > 1.5e9 for s in loss), "wall times")
    print(f"check_tfrecord: TensorBoard reads {path}")


def main():
    if len(sys.argv) < 3:
        fail(__doc__)
    command, args = sys.argv[1], sys.argv[2:]
    if command == "make-tree":
        make_tree(*args)
    elif command == "check-build":
        check_build(*args)
    elif command == "check-golden":
        check_golden(*args)
    elif command == "check-events":
        check_events(*args)
    else:
        fail(f"unknown command {command}")


if __name__ == "__main__":
    main()
