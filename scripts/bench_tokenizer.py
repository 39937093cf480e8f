#!/usr/bin/env python3
"""Tokenizer benchmark: ctune (tests/tools/tok_bench.c, train/tokenizer.h) vs Hugging Face
`tokenizers`, same text, same tokenizer.json, ids compared line by line.

The corpus (~3 MB, deterministic from a seed) mixes English-like prose over a Zipf
vocabulary, C/Python/JSON code, numbers and dates, accented Latin, Greek, Cyrillic, CJK,
emoji (ZWJ sequences, skin tones, flags) and runs of spaces/tabs. Two tokenizers are trained
on it with `tokenizers`, 32k vocabulary each:
  bytelevel-32k  Llama 3 / Qwen style: Split(Llama 3 regex) + ByteLevel, ignore_merges
  metaspace-32k  SentencePiece style: Metaspace pre-tokenizer, byte_fallback with <0xXX>
Each line is encoded without special tokens: ctune with 1 and N OpenMP threads over lines,
tokenizers with encode_batch in a fresh process with RAYON_NUM_THREADS=1 and =N. Best of
REPEATS passes; tokens/s counts output tokens.

    python scripts/bench_tokenizer.py --tool build/tools/tok_bench --threads 2
"""
import argparse
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
COMMON = ("the of and to a in is that for it as was with be by on not he this are or his "
          "from at which but have an they you were her she there been one all we their has "
          "would when if so what out up into more no other can time about only new some "
          "could these two may first then do any like my now over such our man me even most "
          "made after also did many before must through back years where much your way well "
          "model data training loss step weight layer token batch gradient learning rate").split()
SYLLABLES = ("ka ri to na mi se lo ve an ter in ou ch st pr ing ion ent al ed er es re th "
             "qu ph ly ment ness able ous ive tra con pre dis un ex ov sch zw gr bl").split()
LATIN_ACCENTED = ("café naïve résumé über Straße señor niño façade crème brûlée Zürich "
                  "São Paulo Kraków Ångström déjà vu jalapeño piñata Málaga Øresund").split()
GREEK_CYRILLIC = ("Ελληνικά γράμματα και λέξεις μοντέλο δεδομένα русский текст встречается "
                  "модель обучение данные градиент слой весовой коэффициент").split()
EMOJI = ["😀", "🚀", "🦀", "❤️", "👍🏽", "👩‍👩‍👧", "🇫🇷", "🎉", "🤖", "🧪", "✅", "🔥", "🏳️‍🌈",
         "👨🏿‍💻", "☕"]
CJK_RANGES = [(0x4E00, 0x4E00 + 3000), (0x3041, 0x3096), (0x30A1, 0x30FA), (0xAC00, 0xAC00 + 400)]


def make_corpus(target_bytes, seed):
    rng = random.Random(seed)
    words = [w for w in COMMON]
    for _ in range(20000):
        words.append("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    # Zipf weights: a realistic long tail of word frequencies.
    weights = list(itertools.accumulate(1.0 / (i + 1) ** 1.05 for i in range(len(words))))
    cjk = [chr(c) for lo, hi in CJK_RANGES for c in range(lo, hi)]
    cjk_weights = list(itertools.accumulate(1.0 / (i + 1) ** 0.8 for i in range(len(cjk))))

    def sentence(n):
        ws = rng.choices(words, cum_weights=weights, k=n)
        ws[0] = ws[0].capitalize()
        for i in range(1, n):
            r = rng.random()
            if r < 0.05:
                ws[i] += ","
            elif r < 0.07:
                ws[i] = rng.choice(LATIN_ACCENTED)
            elif r < 0.08:
                ws[i] = f"{rng.randint(0, 10 ** rng.randint(1, 7))}"
        return " ".join(ws) + rng.choice([".", ".", ".", "!", "?", "...", ";"])

    def code_line():
        name = rng.choices(words, cum_weights=weights)[0]
        other = rng.choices(words, cum_weights=weights)[0]
        indent = rng.choice(["", "    ", "        ", "\t", "\t\t"])
        return indent + rng.choice([
            f"def {name}_{other}(self, {other}, n={rng.randint(0, 99)}):",
            f"return {name}.{other}({rng.randint(0, 999)}) + {other}[{rng.randint(0, 9)}]",
            f"for (int i = 0; i < {name}_count; i++) {{ {other}[i] += {rng.random():.4f}f; }}",
            f"if ({name} != NULL && {name}->{other} >= {rng.randint(0, 4096)}) return -1;",
            f'{{"{name}": {rng.randint(-500, 500)}, "{other}": [{rng.random():.3f}, null, true]}}',
            f"#include <{name}/{other}.h>  // {sentence(4)}",
            f"x_{name} = np.{other}(a, axis={rng.randint(-2, 2)})**2 / 3.0e-{rng.randint(1, 9)}",
        ])

    def numbers_line():
        return " ".join(rng.choice([
            str(rng.randint(0, 10 ** rng.randint(1, 12))), f"{rng.uniform(-1e4, 1e4):.5f}",
            f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            f"{rng.randint(0, 23)}:{rng.randint(0, 59):02d}", f"{rng.randint(1, 99)}%",
            f"${rng.randint(1, 9999)}.{rng.randint(0, 99):02d}", f"0x{rng.getrandbits(32):08x}",
            f"{rng.random():.3e}"]) for _ in range(rng.randint(3, 12)))

    def unicode_line():
        parts = []
        for _ in range(rng.randint(3, 10)):
            r = rng.random()
            if r < 0.45:
                parts.append("".join(rng.choices(cjk, cum_weights=cjk_weights, k=rng.randint(2, 20))))
            elif r < 0.65:
                parts.append(" ".join(rng.choices(GREEK_CYRILLIC, k=rng.randint(2, 6))))
            elif r < 0.85:
                parts.append("".join(rng.choices(EMOJI, k=rng.randint(1, 4))))
            else:
                parts.append(rng.choice(LATIN_ACCENTED))
        return rng.choice([" ", "、", "，", " — "]).join(parts) + rng.choice(["。", "！", "", "?"])

    def whitespace_line():
        return "".join(rng.choice([" " * rng.randint(1, 12), "\t" * rng.randint(1, 3),
                                   rng.choices(words, cum_weights=weights)[0], "\u00a0", "\u3000", "\r"])
                       for _ in range(rng.randint(3, 15)))

    makers = [(lambda: sentence(rng.randint(5, 40)), 0.45), (code_line, 0.25),
              (numbers_line, 0.08), (unicode_line, 0.15), (whitespace_line, 0.05),
              (lambda: "", 0.02)]
    fns, ws = zip(*makers)
    lines, size = [], 0
    while size < target_bytes:
        line = rng.choices(fns, ws)[0]()
        lines.append(line)
        size += len(line.encode()) + 1
    return lines


def train_tokenizers(lines, out_dir, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    paths = {}
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    paths["bytelevel-32k"] = os.path.join(out_dir, "bytelevel.json")
    tok.save(paths["bytelevel-32k"])

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                 split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False, limit_alphabet=1000,
        special_tokens=specials))
    data = json.loads(tok.to_str())
    # Byte tokens are plain vocabulary in SentencePiece conversions, not added tokens.
    data["added_tokens"] = [t for t in data["added_tokens"] if not t["content"].startswith("<0x")]
    paths["metaspace-32k"] = os.path.join(out_dir, "metaspace.json")
    with open(paths["metaspace-32k"], "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    return paths


HF_WORKER = r"""
import json, sys, time, numpy as np
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
lines = open(sys.argv[2], encoding="utf-8", newline="").read().split("\n")
best = 1e30
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    enc = tok.encode_batch(lines, add_special_tokens=False)
    best = min(best, time.perf_counter() - t0)
out = []
for e in enc:
    out.append(len(e.ids)); out.extend(e.ids)
np.asarray(out, dtype="<i4").tofile(sys.argv[4])
print(json.dumps({"tokens": sum(len(e.ids) for e in enc), "seconds": best}))
"""


def read_ids(path):
    flat = np.fromfile(path, dtype="<i4")
    lines, i = [], 0
    while i < len(flat):
        n = int(flat[i])
        lines.append(flat[i + 1:i + 1 + n])
        i += 1 + n
    return lines


def run_ctune(tool, tokenizer, corpus, threads, repeats, out):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run([tool, tokenizer, corpus, str(threads), str(repeats), out], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"tok_bench failed: {r.stderr}")
    return json.loads(r.stdout)


def run_hf(tokenizer, corpus, threads, repeats, out, work):
    worker = os.path.join(work, "hf_worker.py")
    with open(worker, "w") as f:
        f.write(HF_WORKER)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), RAYON_RS_NUM_CPUS=str(threads),
               TOKENIZERS_PARALLELISM="true" if threads > 1 else "false")
    r = subprocess.run([sys.executable, worker, tokenizer, corpus, str(repeats), out], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"tokenizers worker failed: {r.stderr}")
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--megabytes", type=float, default=3.0)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=20261122)
    args = ap.parse_args()
    import tokenizers
    print(f"# tokenizer benchmark {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"# tokenizers {tokenizers.__version__}, python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} cpus, threads {args.threads}, "
          f"best of {args.repeats}, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        lines = make_corpus(int(args.megabytes * 1e6), args.seed)
        corpus = os.path.join(work, "corpus.txt")
        with open(corpus, "w", encoding="utf-8", newline="") as f:
            f.write("\n".join(lines))
        size = os.path.getsize(corpus)
        print(f"# corpus: {len(lines)} lines, {size} bytes, {len(''.join(lines))} chars "
              f"(seed {args.seed}), made in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        paths = train_tokenizers(lines, work, args.vocab)
        from tokenizers import Tokenizer
        sizes = {n: Tokenizer.from_file(p).get_vocab_size() for n, p in paths.items()}
        print(f"# trained in {time.perf_counter() - t0:.1f} s: vocab sizes {sizes}")
        print()
        header = f"{'tokenizer':<15}{'side':<10}{'threads':>8}{'tokens':>10}{'seconds':>10}" \
                 f"{'Mtok/s':>9}{'MB/s':>8}"
        print(header)
        summary = []
        mismatched_total = 0
        for name, path in paths.items():
            rows = {}
            for threads in sorted({1, args.threads}):
                for side in ("ctune", "tokenizers"):
                    out = os.path.join(work, f"{name}.{side}.{threads}.ids")
                    if side == "ctune":
                        res = run_ctune(args.tool, path, corpus, threads, args.repeats, out)
                    else:
                        res = run_hf(path, corpus, threads, args.repeats, out, work)
                    res["ids"] = out
                    rows[(side, threads)] = res
                    print(f"{name:<15}{side:<10}{threads:>8}{res['tokens']:>10}"
                          f"{res['seconds']:>10.3f}{res['tokens'] / res['seconds'] / 1e6:>9.3f}"
                          f"{size / res['seconds'] / 1e6:>8.2f}")
            ref = read_ids(rows[("tokenizers", 1)]["ids"])
            for key, res in rows.items():
                got = read_ids(res["ids"])
                bad = [i for i, (a, b) in enumerate(zip(got, ref)) if not np.array_equal(a, b)]
                bad += list(range(min(len(got), len(ref)), max(len(got), len(ref))))
                mismatched_total += len(bad)
                if bad:
                    i = bad[0]
                    print(f"MISMATCH {name} {key[0]} x{key[1]}: {len(bad)} of {len(ref)} lines "
                          f"differ; first line {i + 1}: {lines[i][:80]!r}")
            for threads in sorted({1, args.threads}):
                c, h = rows[("ctune", threads)], rows[("tokenizers", threads)]
                summary.append(f"{name:<15} {threads} thread(s): ctune/tokenizers = "
                               f"{h['seconds'] / c['seconds']:.2f}x tokens/s")
            print(f"{name:<15} ids: {len(ref)} lines, {sum(len(x) for x in ref)} tokens; "
                  f"ctune x1, ctune x{args.threads}, tokenizers x{args.threads} vs "
                  f"tokenizers x1: {'identical' if not mismatched_total else 'SEE MISMATCH'}")
        print()
        for line in summary:
            print(line)
        print(f"mismatched lines in total: {mismatched_total}")
        return 1 if mismatched_total else 0


if __name__ == "__main__":
    sys.exit(main())
