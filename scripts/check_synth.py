"""Reads a retrain-synth archive with Python's tarfile, pickle and numpy, and compares every member,
array, label and file name with the generator's report. Exits non-zero on the first mismatch.

usage: check_synth.py ARCHIVE REPORT
"""

import hashlib
import json
import pickle
import sys
import tarfile
import warnings

import numpy as np

CIFAR10_KEYS = ["batch_label", "labels", "data", "filenames"]
CIFAR100_KEYS = ["filenames", "batch_label", "fine_labels", "coarse_labels", "data"]


def fail(msg):
    sys.exit(f"check_synth: {msg}")


def expect(cond, msg):
    if not cond:
        fail(msg)


def text(value, encoding):
    """A Python 2 str as decoded under the given pickle encoding."""
    if encoding == "bytes":
        expect(isinstance(value, bytes), f"expected bytes, got {type(value).__name__}")
        return value.decode("latin1")
    expect(isinstance(value, str), f"expected str, got {type(value).__name__}")
    return value


def load(raw, encoding):
    with warnings.catch_warnings():
        # numpy 2 reads the numpy 1 module path `numpy.core` through a deprecation shim.
        warnings.simplefilter("ignore", DeprecationWarning)
        return pickle.loads(raw, encoding=encoding)


def check_batch(raw, expected, encoding):
    name = expected["member"]
    batch = load(raw, encoding)
    keys = [text(k, encoding) for k in batch]
    want = CIFAR100_KEYS if "coarse_labels" in expected else CIFAR10_KEYS
    expect(keys == want, f"{name}: keys {keys}, expected {want}")
    get = {text(k, encoding): v for k, v in batch.items()}
    n = len(expected["labels"])

    data = get["data"]
    expect(isinstance(data, np.ndarray), f"{name}: data is {type(data).__name__}")
    expect(data.dtype == np.uint8, f"{name}: dtype {data.dtype}")
    expect(data.shape == (n, 3072), f"{name}: shape {data.shape}, expected {(n, 3072)}")
    expect(data.flags["C_CONTIGUOUS"], f"{name}: data not C-contiguous")
    digest = hashlib.sha256(data.tobytes()).hexdigest()
    if digest != expected["data_sha256"]:
        for row, want_md5 in enumerate(expected["row_md5"]):
            got = hashlib.md5(data[row].tobytes()).hexdigest()
            expect(got == want_md5, f"{name}: row {row} md5 {got}, expected {want_md5}")
        fail(f"{name}: data sha256 {digest}, expected {expected['data_sha256']}")
    hwc = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    for row, y, x, c, value in expected["samples"]:
        got = int(hwc[row, y, x, c])
        expect(got == value, f"{name}: image {row} pixel (y={y}, x={x}, c={c}) is {got}, expected {value}")

    expect(text(get["batch_label"], encoding) == expected["batch_label"], f"{name}: batch_label")
    label_key = "fine_labels" if "coarse_labels" in expected else "labels"
    labels = get[label_key]
    expect(isinstance(labels, list) and all(type(v) is int for v in labels), f"{name}: {label_key} not a list of int")
    expect(labels == expected["labels"], f"{name}: {label_key} differ")
    if "coarse_labels" in expected:
        expect(get["coarse_labels"] == expected["coarse_labels"], f"{name}: coarse_labels differ")
    filenames = [text(f, encoding) for f in get["filenames"]]
    expect(filenames == expected["filenames"], f"{name}: filenames differ")
    return n


def check_meta(raw, report, member, encoding):
    meta = load(raw, encoding)
    get = {text(k, encoding): v for k, v in meta.items()}
    if report["dataset"] == "cifar10":
        expect(list(get) == ["num_cases_per_batch", "label_names", "num_vis"], f"{member}: keys {list(get)}")
        expect(get["num_cases_per_batch"] == report["images_per_batch"], f"{member}: num_cases_per_batch")
        expect(get["num_vis"] == 3072, f"{member}: num_vis")
        names = [text(n, encoding) for n in get["label_names"]]
        expect(names == report["label_names"], f"{member}: label_names {names}")
    else:
        expect(list(get) == ["fine_label_names", "coarse_label_names"], f"{member}: keys {list(get)}")
        expect([text(n, encoding) for n in get["fine_label_names"]] == report["label_names"], f"{member}: fine names")
        expect(
            [text(n, encoding) for n in get["coarse_label_names"]] == report["coarse_label_names"],
            f"{member}: coarse names",
        )


def main():
    if len(sys.argv) != 3:
        fail(__doc__)
    archive, report_path = sys.argv[1], sys.argv[2]
    with open(report_path) as f:
        report = json.load(f)
    batches = {b["member"]: b for b in report["batches"]}
    members = []
    n_images = 0
    with tarfile.open(archive, "r:gz") as tar:
        for info in tar:
            members.append(info.name + ("/" if info.isdir() else ""))
            if info.isdir():
                continue
            expect(info.isfile(), f"{info.name}: not a regular file")
            raw = tar.extractfile(info).read()
            want = next(m for m in report["members"] if m["path"] == members[-1])
            expect(len(raw) == want["bytes"], f"{info.name}: {len(raw)} bytes, expected {want['bytes']}")
            expect(hashlib.md5(raw).hexdigest() == want["md5"], f"{info.name}: md5 differs from the report")
            base = info.name.rsplit("/", 1)[-1]
            for encoding in ("bytes", "latin1"):
                if info.name in batches:
                    n = check_batch(raw, batches[info.name], encoding)
                elif base in ("batches.meta", "meta"):
                    check_meta(raw, report, info.name, encoding)
            if info.name in batches:
                n_images += n
    expected_order = [m["path"] for m in report["members"]]
    expect(members == expected_order, f"member order {members}, expected {expected_order}")

    # File names repeat within the training split exactly where the report says.
    seen = {}
    for b in report["batches"]:
        if not b["batch_label"].startswith("training"):
            continue
        for row, name in enumerate(b["filenames"]):
            seen.setdefault(name, []).append([b["member"].rsplit("/", 1)[-1], row])
    repeated = sorted(sorted(v) for v in seen.values() if len(v) > 1)
    reported = sorted(sorted(c["images"]) for c in report["collisions"])
    expect(repeated == reported, f"repeated file names {repeated}, reported {reported}")
    print(
        f"check_synth: {archive}: {len(members)} members, {n_images} images, "
        f"{len(reported)} name collisions: all match (numpy {np.__version__})"
    )


if __name__ == "__main__":
    main()
