"""The work of TensorFlow's research/inception build_image_data.py, for side-by-side benchmarks
with `retrain-tfrecord build`. Written from the reference's description (not a copy), with the
same TensorFlow machinery: one TF1-style session shared by the worker threads, PNG decoded with
decode_png(channels=3) and re-encoded with encode_jpeg(quality=100) through placeholders, every
image decoded again with decode_jpeg to get its size, tf.train.Example with the same nine
features, TFRecordWriter per shard, Python's random.seed(12345) shuffle, shards split evenly
between threads.

usage: build_image_data_equiv.py --train_directory DIR --validation_directory DIR
           --labels_file FILE --output_directory DIR [--train_shards 2] [--validation_shards 2]
           [--num_threads 2]

Needs TensorFlow (not installed by scripts/venv.sh; `cargo xtask bench` uses target/tf-venv when it
exists).
"""

import argparse
import os
import random
import threading

import tensorflow as tf

tf1 = tf.compat.v1
tf1.disable_eager_execution()


def int64_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


class Coder:
    """One session and the two graphs the reference runs per image."""

    def __init__(self):
        self.session = tf1.Session()
        self.png = tf1.placeholder(dtype=tf.string)
        self.png_to_jpeg = tf.io.encode_jpeg(
            tf.io.decode_png(self.png, channels=3), format="rgb", quality=100
        )
        self.jpeg = tf1.placeholder(dtype=tf.string)
        self.decoded = tf.io.decode_jpeg(self.jpeg, channels=3)

    def convert(self, data):
        return self.session.run(self.png_to_jpeg, feed_dict={self.png: data})

    def shape(self, data):
        return self.session.run(self.decoded, feed_dict={self.jpeg: data}).shape


def find_files(directory, labels_file):
    with open(labels_file) as f:
        classes = [line.strip() for line in f if line.strip()]
    files, texts, labels = [], [], []
    for label, text in enumerate(classes, start=1):
        matches = tf.io.gfile.glob(f"{directory}/{text}/*")
        files += matches
        texts += [text] * len(matches)
        labels += [label] * len(matches)
    order = list(range(len(files)))
    random.seed(12345)
    random.shuffle(order)
    return [files[i] for i in order], [texts[i] for i in order], [labels[i] for i in order]


def example(path, data, label, text, height, width):
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/height": int64_feature(height),
                "image/width": int64_feature(width),
                "image/colorspace": bytes_feature(b"RGB"),
                "image/channels": int64_feature(3),
                "image/class/label": int64_feature(label),
                "image/class/text": bytes_feature(text.encode()),
                "image/format": bytes_feature(b"JPEG"),
                "image/filename": bytes_feature(os.path.basename(path).encode()),
                "image/encoded": bytes_feature(data),
            }
        )
    )


def worker(coder, name, index, n_threads, files, texts, labels, n_shards, out):
    per_thread = n_shards // n_threads
    start = len(files) * index // n_threads
    end = len(files) * (index + 1) // n_threads
    for s in range(per_thread):
        shard = index * per_thread + s
        lo = start + (end - start) * s // per_thread
        hi = start + (end - start) * (s + 1) // per_thread
        path = os.path.join(out, f"{name}-{shard:05d}-of-{n_shards:05d}")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(lo, hi):
                try:
                    with open(files[i], "rb") as f:
                        data = f.read()
                    if files[i].endswith(".png"):
                        print(f"Converting PNG to JPEG for {files[i]}")
                        data = coder.convert(data)
                    height, width, _ = coder.shape(data)
                except Exception as e:  # the reference skips what it cannot decode
                    print(f"SKIPPED {files[i]}: {e}")
                    continue
                writer.write(
                    example(files[i], data, labels[i], texts[i], height, width).SerializeToString()
                )


def process(name, directory, n_shards, args):
    assert n_shards % args.num_threads == 0, "shards must be divisible by threads"
    files, texts, labels = find_files(directory, args.labels_file)
    coder = Coder()
    threads = [
        threading.Thread(
            target=worker,
            args=(coder, name, i, args.num_threads, files, texts, labels, n_shards, args.output_directory),
        )
        for i in range(args.num_threads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{name}: {len(files)} files")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train_directory", required=True)
    parser.add_argument("--validation_directory", required=True)
    parser.add_argument("--labels_file", required=True)
    parser.add_argument("--output_directory", required=True)
    parser.add_argument("--train_shards", type=int, default=2)
    parser.add_argument("--validation_shards", type=int, default=2)
    parser.add_argument("--num_threads", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(args.output_directory, exist_ok=True)
    process("validation", args.validation_directory, args.validation_shards, args)
    process("train", args.train_directory, args.train_shards, args)


if __name__ == "__main__":
    main()
