"""Checks a retrain-sort output folder against the batches it was made from, read independently with
Python's pickle, numpy and Pillow. Exits non-zero on the first mismatch.

- labels.txt holds the class names in label order, one per line, each line ending in a newline;
- every image of every batch is a PNG at train_dir/<class>/<name> (training batches) or
  validation_dir/<class>/<name> (the test batch), read back pixel for pixel in height-width-channel
  order, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) (the reference recipe's transposed
  images would fail here);
- the file names follow retrain-sort's rules, re-implemented here: unsafe names sanitised, and when
  a name is taken in its class folder, a later image (in batch order) becomes
  <stem>__<batch>_r<row:04>.png;
- nothing else is in the split folders: every image is there exactly once;
- the per-split and per-class counts in sort-report.json are the ones counted here.

usage: check_sort.py BATCHES_DIR OUT_DIR cifar10|cifar100 fine|coarse
"""

import json
import os
import pickle
import sys
import warnings

import numpy as np
from PIL import Image

MAX_NAME_BYTES = 200


def fail(msg):
    sys.exit(f"check_sort: {msg}")


def expect(cond, msg):
    if not cond:
        fail(msg)


def load(path):
    with open(path, "rb") as f, warnings.catch_warnings():
        # numpy 2 reads the numpy 1 module path `numpy.core` through a deprecation shim.
        warnings.simplefilter("ignore", DeprecationWarning)
        return pickle.load(f, encoding="bytes")


def text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def sanitise(raw):
    """retrain-sort's rules: separators and control characters become _, and so do leading dots
    and dots next to dots; empty becomes `unnamed`; cut at 200 bytes on a character boundary."""
    out = []
    leading = True
    for idx, ch in enumerate(raw):
        unsafe = ch in "/\\" or ch == "\0" or (ord(ch) < 0x20) or (0x7F <= ord(ch) <= 0x9F)
        near_dot = ch == "." and (leading or (idx > 0 and raw[idx - 1] == ".") or raw[idx + 1 : idx + 2] == ".")
        leading = leading and ch == "."
        out.append("_" if unsafe or near_dot else ch)
    name = "".join(out) or "unnamed"
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_NAME_BYTES:
        name = encoded[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")
    return name


def file_name(raw):
    name = sanitise(raw)
    return name if name.endswith(".png") else name + ".png"


def main():
    batches_dir, out, dataset, labels_kind = sys.argv[1:5]
    if dataset == "cifar10":
        meta = load(os.path.join(batches_dir, "batches.meta"))
        raw_classes = meta[b"label_names"]
        batches = [(f"data_batch_{k}", "train_dir") for k in range(1, 6)] + [("test_batch", "validation_dir")]
        label_key = b"labels"
    else:
        meta = load(os.path.join(batches_dir, "meta"))
        fine = labels_kind == "fine"
        raw_classes = meta[b"fine_label_names" if fine else b"coarse_label_names"]
        batches = [("train", "train_dir"), ("test", "validation_dir")]
        label_key = b"fine_labels" if fine else b"coarse_labels"
    classes = [sanitise(text(c)) for c in raw_classes]

    with open(os.path.join(out, "labels.txt"), "rb") as f:
        labels_txt = f.read().decode("utf-8")
    expect(labels_txt == "".join(c + "\n" for c in classes), "labels.txt is not the class names, one per line")

    expected = {}  # relative path -> (batch, row)
    taken = {}  # (split, class) -> set of names
    counts = {}  # split -> per-class counts
    images = {}  # batch -> HWC array
    n_collisions = 0
    for batch_name, split in batches:
        batch = load(os.path.join(batches_dir, batch_name))
        data = batch[b"data"]
        expect(data.dtype == np.uint8 and data.shape[1] == 3072, f"{batch_name}: data is {data.dtype} {data.shape}")
        images[batch_name] = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = batch[label_key]
        filenames = [text(f) for f in batch[b"filenames"]]
        expect(len(labels) == len(filenames) == data.shape[0], f"{batch_name}: lengths differ")
        per_class = counts.setdefault(split, np.zeros(len(classes), dtype=np.int64))
        per_class += np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
        for row, (label, raw) in enumerate(zip(labels, filenames)):
            names = taken.setdefault((split, label), set())
            name = file_name(raw)
            if name in names:
                n_collisions += 1
                base = f"{name[: -len('.png')]}__{batch_name}_r{row:04d}"
                name, k = base + ".png", 2
                while name in names:
                    name, k = f"{base}_{k}.png", k + 1
            names.add(name)
            path = f"{split}/{classes[label]}/{name}"
            expect(path not in expected, f"{path} expected twice")
            expected[path] = (batch_name, row)

    written = set()
    for split in ("train_dir", "validation_dir"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(out, split)):
            for name in filenames:
                written.add(os.path.relpath(os.path.join(dirpath, name), out).replace(os.sep, "/"))
    missing = sorted(set(expected) - written)
    extra = sorted(written - set(expected))
    expect(not missing, f"{len(missing)} images missing, e.g. {missing[:3]}")
    expect(not extra, f"{len(extra)} unexpected files, e.g. {extra[:3]}")

    for path, (batch_name, row) in expected.items():
        with Image.open(os.path.join(out, path)) as image:
            expect(image.format == "PNG", f"{path}: format {image.format}")
            expect(image.mode == "RGB" and image.size == (32, 32), f"{path}: {image.mode} {image.size}")
            pixels = np.asarray(image)
        want = images[batch_name][row]
        if not np.array_equal(pixels, want):
            y, x, c = np.argwhere(pixels != want)[0]
            fail(f"{path}: pixel (y={y}, x={x}) channel {c} is {pixels[y, x, c]}, expected {want[y, x, c]} ({batch_name} row {row})")

    with open(os.path.join(out, "sort-report.json")) as f:
        report = json.load(f)
    expect(report["class_names"] == classes, "report: class names differ")
    expect(len(report["collisions"]) == n_collisions, f"report: {len(report['collisions'])} collisions, counted {n_collisions}")
    for entry in report["splits"]:
        split = entry["dir"]
        want = counts[split]
        expect(entry["images"] == int(want.sum()), f"report: {split} has {entry['images']} images, counted {int(want.sum())}")
        got = [c["images"] for c in entry["classes"]]
        expect(got == [int(v) for v in want], f"report: {split} per-class counts {got}, counted {list(want)}")
    print(f"check_sort: {out}: {len(expected)} images in {len(classes)} classes, {n_collisions} collisions kept, all pixel-exact")


if __name__ == "__main__":
    main()
