"""same_runs.py A B FILE: runs/A and runs/B (from the current folder) trained the same, byte for
byte: every metrics.jsonl line equal once the timing fields (tok_s, elapsed_s,
peak_memory_bytes) are left out, at least one evaluation among them, and final/FILE the same
bytes. Prints the first difference; exits 1 on any. Used by tests/zero3.sh and tests/qlora.sh."""
import json
import sys

TIMING = ("tok_s", "elapsed_s", "peak_memory_bytes")


def lines(name):
    with open(f"runs/{name}/metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in f]


def main():
    a_name, b_name, file = sys.argv[1:4]
    a, b = lines(a_name), lines(b_name)
    if a != b:
        for x, y in zip(a, b):
            if x != y:
                print("  first difference:", x, "vs", y)
                break
        return 1
    if not any("eval_loss" in r for r in a):
        print("  no eval lines")
        return 1
    with open(f"runs/{a_name}/final/{file}", "rb") as f, open(f"runs/{b_name}/final/{file}", "rb") as g:
        if f.read() != g.read():
            print(f"  final/{file} differs")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
