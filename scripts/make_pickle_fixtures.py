"""Writes tiny CIFAR-format batches as Python 3 pickles, for retrain-pickle's tests.

usage: make_pickle_fixtures.py OUT_DIR

Each file holds 2 images whose byte j of row i is (i * 31 + j * 7) % 256, labels [3, 9] (CIFAR-100:
fine [3, 99], coarse [1, 19]) and filenames ['a_s_000001.png', 'b_s_000002.png'], pickled with
protocols 2 to 5, with str keys (as Python 3 writes its own dicts) and bytes keys (as
pickle.load(f, encoding='bytes') returns the real files). The numpy version goes into the name:
numpy 1 pickles name numpy.core, numpy 2 numpy._core.
"""

import os
import pickle
import sys

import numpy as np


def batch(keys, cifar100):
    data = np.array([[(i * 31 + j * 7) % 256 for j in range(3072)] for i in range(2)], dtype=np.uint8)
    items = {
        "batch_label": "training batch 1 of 5",
        "data": data,
        "filenames": ["a_s_000001.png", "b_s_000002.png"],
    }
    if cifar100:
        items["fine_labels"] = [3, 99]
        items["coarse_labels"] = [1, 19]
    else:
        items["labels"] = [3, 9]
    if keys == "bytes":
        items = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in items.items()}
        key = b"filenames"
        items[key] = [f.encode() for f in items[key]]
    return items


def main():
    out = sys.argv[1]
    major = np.__version__.split(".")[0]
    for protocol in (2, 3, 4, 5):
        for keys in ("str", "bytes"):
            for cifar100 in (False, True):
                name = f"py3-numpy{major}-p{protocol}-{keys}{'-cifar100' if cifar100 else ''}.pkl"
                with open(os.path.join(out, name), "wb") as f:
                    pickle.dump(batch(keys, cifar100), f, protocol=protocol)
    print(f"wrote fixtures for numpy {np.__version__} to {out}")


if __name__ == "__main__":
    main()
