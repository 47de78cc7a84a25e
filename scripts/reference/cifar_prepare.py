"""The reference recipe's CIFAR-10 preparation, reproduced to be timed against retrain-sort.

It does what the "retrain an existing CNN" tutorial's preparation script did (REFERENCE.md): unpickle
each batch with encoding='bytes', and for each row reshape it to (3, 32, 32), call .transpose() and
write it with imageio.imwrite to <out>/train_dir/<class>/<name> (data_batch_1..5) or
<out>/validation_dir/<class>/<name> (test_batch), one image at a time; then write the labels file.

Its defects are kept on purpose, because this is the reference being timed, not a tool to use:
- .transpose() reverses all three axes, (3, 32, 32) -> (32, 32, 3) as (W, H, C): every image is
  saved transposed (the correct order is transpose(1, 2, 0));
- an image whose file name is already taken in its class folder silently overwrites the earlier one;
- the labels file is written with "{}n" instead of "{}\\n", so it is a single line.

usage: cifar_prepare.py BATCHES_DIR OUT_DIR
"""

import os
import pickle
import sys

import imageio


def unpickle(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def save(batch, label_names, out_dir):
    for row, label, filename in zip(batch[b"data"], batch[b"labels"], batch[b"filenames"]):
        image = row.reshape(3, 32, 32).transpose()  # the recipe's transposition, kept
        class_dir = os.path.join(out_dir, label_names[label])
        os.makedirs(class_dir, exist_ok=True)
        imageio.imwrite(os.path.join(class_dir, filename.decode()), image)


def main():
    batches_dir, out = sys.argv[1], sys.argv[2]
    meta = unpickle(os.path.join(batches_dir, "batches.meta"))
    label_names = [name.decode() for name in meta[b"label_names"]]
    for k in range(1, 6):
        save(unpickle(os.path.join(batches_dir, f"data_batch_{k}")), label_names, os.path.join(out, "train_dir"))
    save(unpickle(os.path.join(batches_dir, "test_batch")), label_names, os.path.join(out, "validation_dir"))
    with open(os.path.join(out, "labels.txt"), "w") as f:
        for name in label_names:
            f.write("{}n".format(name))  # the recipe's missing newline, kept


if __name__ == "__main__":
    main()
