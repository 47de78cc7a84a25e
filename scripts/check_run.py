"""Cross-checks a training run (retrain-train + retrain-eval) with TensorBoard and Pillow. Exits
non-zero on the first mismatch.

usage:
  check_run.py RUN
      Loads RUN/train/events.out.tfevents.* with TensorBoard's EventAccumulator and compares the
      scalars `loss`, `learning_rate` and `accuracy` with RUN/metrics.jsonl, step by step; loads
      RUN/eval's events and compares `precision_at_1` and `recall_at_5` with RUN/eval/metrics.json;
      checks that metrics.json's confusion matrix sums to its example count and agrees with the
      per-class accuracies; opens loss.png and confusion.png with Pillow.
"""

import glob
import json
import os
import sys

from PIL import Image
from tensorboard.backend.event_processing import event_accumulator


def fail(msg):
    print(f"check_run: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def scalars(directory):
    files = glob.glob(os.path.join(directory, "events.out.tfevents.*"))
    expect(files, f"no event file in {directory}")
    acc = event_accumulator.EventAccumulator(directory)
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def main():
    if len(sys.argv) != 2:
        fail(__doc__)
    run = sys.argv[1]
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    expect(records, "metrics.jsonl is empty")
    train = scalars(os.path.join(run, "train"))
    expect(
        sorted(train) == ["accuracy", "learning_rate", "loss"], f"train tags {sorted(train)}"
    )
    for tag, key in [("loss", "loss"), ("learning_rate", "learning_rate"), ("accuracy", "accuracy")]:
        got = [(s.step, s.value) for s in train[tag]]
        want = [(r["step"], r[key]) for r in records]
        expect(len(got) == len(want), f"{tag}: {len(got)} events, {len(want)} records")
        for (gs, gv), (ws, wv) in zip(got, want):
            expect(gs == ws and abs(gv - wv) <= 1e-6 * max(1.0, abs(wv)), f"{tag}: {gs} {gv} vs {ws} {wv}")
    metrics = json.load(open(os.path.join(run, "eval", "metrics.json")))
    ev = scalars(os.path.join(run, "eval"))
    for tag in ["precision_at_1", "recall_at_5"]:
        (s,) = ev[tag]
        expect(abs(s.value - metrics[tag]) < 1e-6, f"{tag}: event {s.value}, metrics {metrics[tag]}")
    confusion = metrics["confusion"]
    n = metrics["examples"]
    expect(sum(map(sum, confusion)) == n, "confusion matrix does not sum to the examples")
    correct = sum(confusion[i][i] for i in range(len(confusion)))
    expect(abs(correct / n - metrics["precision_at_1"]) < 1e-9, "diagonal vs precision@1")
    for i, c in enumerate(metrics["per_class"]):
        expect(c["examples"] == sum(confusion[i]), f"class {c['class']} count")
    for png in ["loss.png", os.path.join("eval", "confusion.png")]:
        with Image.open(os.path.join(run, png)) as im:
            im.load()
            expect(im.width >= 200 and im.height >= 200, f"{png}: {im.size}")
    print(
        f"check_run: TensorBoard reads {len(records)} training summaries and the evaluation "
        f"({n} examples, precision@1 {metrics['precision_at_1']:.4f}) of {run}"
    )


if __name__ == "__main__":
    main()
