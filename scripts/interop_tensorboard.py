"""TensorBoard reads ctune's event files as ctune's metrics.jsonl says (tests/interop_tensorboard.sh).

For each run folder given: tensorboard's own EventAccumulator (with its purge of steps a resumed
run redid) loads <run>/tensorboard; every scalar must equal the float32 rounding of the
metrics.jsonl value at the same step, each step exactly once, no other tags or steps; the
format version is 2 and wall times are real; the text "recipe" (TensorBoard's text plugin) holds
<run>/recipe.resolved.yaml, once per event file. --same A B: two runs' deterministic scalars
(everything but throughput) are equal, step for step.
"""
import argparse
import glob
import json
import math
import os
import sys

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.text import text_plugin
from tensorboard.util import tensor_util

TRAIN_TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens": "train/tokens",
              "tok_s": "train/tokens_per_second", "loss_scale": "train/loss_scale"}
EVAL_TAGS = {"eval_loss": "eval/loss", "eval_accuracy": "eval/accuracy"}
DETERMINISTIC = ["train/loss", "train/lr", "train/grad_norm", "train/tokens", "train/loss_scale", "train/skipped",
                 "eval/loss", "eval/accuracy"]


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def expected_scalars(run):
    """tag -> {step: float32 value} from metrics.jsonl."""
    want = {}
    for line in open(os.path.join(run, "metrics.jsonl")):
        rec = json.loads(line)
        step = rec["step"]
        tags = TRAIN_TAGS if "loss" in rec else EVAL_TAGS
        for key, tag in tags.items():
            if key in rec:
                value = rec[key]
                want.setdefault(tag, {})[step] = np.float32(math.nan if value is None else value)
        if "loss_scale" in rec:
            want.setdefault("train/skipped", {})[step] = np.float32(1.0 if rec.get("skipped") else 0.0)
        if "peak_memory_bytes" in rec:
            want.setdefault("train/peak_memory_gib", {})[step] = np.float32(rec["peak_memory_bytes"] / 2**30)
    return want


def load_tensorboard(run):
    folder = os.path.join(run, "tensorboard")
    files = sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
    if not files:
        fail(f"{folder}: no event files")
    acc = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.SCALARS: 0,
                                                                    event_accumulator.TENSORS: 0})
    acc.Reload()
    if acc.file_version != 2:
        fail(f"{folder}: file_version {acc.file_version}, expected 2")
    texts = acc.Tensors("recipe") if "recipe" in acc.Tags()["tensors"] else []
    if len(texts) != len(files):
        fail(f"{folder}: {len(texts)} recipe texts for {len(files)} event files")
    metadata = acc.SummaryMetadata("recipe")
    if metadata.plugin_data.plugin_name != "text":
        fail(f"{folder}: the recipe text's plugin is {metadata.plugin_data.plugin_name!r}")
    recipe = open(os.path.join(run, "recipe.resolved.yaml")).read()
    shown = tensor_util.make_ndarray(texts[-1].tensor_proto).item().decode()
    if shown != f"```yaml\n{recipe}```\n":
        fail(f"{folder}: the last recipe text is not recipe.resolved.yaml in a yaml block: {shown[:200]!r}")
    html = text_plugin.text_array_to_html(tensor_util.make_ndarray(texts[-1].tensor_proto), True)
    if not html.startswith("<pre><code") or "method:" not in html:
        fail(f"{folder}: TensorBoard's Text tab would not show the recipe as a code block: {html[:200]!r}")
    got = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        if len(set(steps)) != len(steps):
            fail(f"{folder}: {tag} has repeated steps {steps} (a resumed run's redone steps were not purged)")
        for e in events:
            if not (1.7e9 < e.wall_time < 4.1e9):
                fail(f"{folder}: {tag} step {e.step}: wall_time {e.wall_time} is not a Unix time")
        got[tag] = {e.step: np.float32(e.value) for e in events}
    return got, len(files)


def same_value(a, b, rel=0.0):
    return (math.isnan(a) and math.isnan(b)) or abs(float(a) - float(b)) <= rel * abs(float(b))


# metrics.jsonl writes throughput with 8 significant digits, everything else with 17 (exact)
ROUNDED = {"train/tokens_per_second": 2e-7}


def check_run(run):
    want = expected_scalars(run)
    got, n_files = load_tensorboard(run)
    if set(got) != set(want):
        fail(f"{run}: tags {sorted(got)}, metrics.jsonl has {sorted(want)}")
    for tag, steps in want.items():
        if set(got[tag]) != set(steps):
            fail(f"{run}: {tag} at steps {sorted(got[tag])}, metrics.jsonl at {sorted(steps)}")
        for step, value in steps.items():
            if not same_value(got[tag][step], value, ROUNDED.get(tag, 0.0)):
                fail(f"{run}: {tag} step {step}: TensorBoard reads {got[tag][step]!r}, metrics.jsonl {value!r}")
    n_train = len(want["train/loss"])
    print(f"ok   {run}: {len(want)} tags, {n_train} steps, {n_files} event file(s), every value as metrics.jsonl, "
          "the recipe as text")
    return got, n_files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--files", type=int, nargs="*", help="the number of event files each run must have")
    ap.add_argument("--same", nargs=2, metavar=("A", "B"), help="runs whose deterministic scalars must be equal")
    args = ap.parse_args()
    loaded = {}
    for i, run in enumerate(args.runs):
        got, n_files = check_run(run)
        if args.files and args.files[i] != n_files:
            fail(f"{run}: {n_files} event files, expected {args.files[i]}")
        loaded[run] = got
    if args.same:
        a, b = (loaded[r] if r in loaded else load_tensorboard(r)[0] for r in args.same)
        for tag in DETERMINISTIC:
            if tag not in a and tag not in b:
                continue
            if tag not in a or tag not in b or set(a[tag]) != set(b[tag]) or \
                    any(not same_value(a[tag][step], b[tag][step]) for step in a[tag]):
                fail(f"{tag} differs between {args.same[0]} and {args.same[1]}")
        print(f"ok   {args.same[0]} and {args.same[1]}: the same losses, lr, norms, tokens and evals")


if __name__ == "__main__":
    main()
