#!/usr/bin/env python3
"""Writes the tokenizer reference fixtures used by tests/test_tokenizer.c.

Small byte-level BPE tokenizers are trained here with the Hugging Face `tokenizers` library
(the reference implementation) in the three shapes ctune must read:
  gpt2.json    ByteLevel pre-tokenizer (GPT-2 regex, add_prefix_space), specials at ids 0..,
               a non-special single_word token and an lstrip special, merges as [a, b] pairs
  llama3.json  Split(Llama 3 regex) + ByteLevel(use_regex=false), TemplateProcessing BOS in a
               Sequence post-processor, ignore_merges with whole words reachable only that way,
               specials after the vocabulary
  qwen2.json   NFC normalizer, Split(Qwen2 regex: one digit at a time) + ByteLevel(use_regex=
               false), merges in the legacy "a b" string form
  llama2.json  SentencePiece-style BPE as Llama 2 ships it: Prepend + Replace normalizers, no
               pre-tokenizer, byte_fallback with <0xXX> tokens, Replace/ByteFallback/Fuse/Strip
               decoders, TemplateProcessing BOS
  metaspace.json  the newer form: Metaspace pre-tokenizer and decoder (prepend_scheme first),
               no byte fallback but a fused <unk> and a limited alphabet
  split.json   a tiny tokenizer whose first pre-tokenizer step the C test rewrites (every
               Split behaviour, invert, a String pattern, Digits); the same for the
               Metaspace step of metaspace.json (prepend schemes, split)
Expected ids and decoded strings for a varied corpus come from `tokenizers` itself, never
from ctune, and are written to expected_<tokenizer>.json and expected_variants.json.

Run with the project venv:  /opt/ctune-venv/bin/python scripts/gen_tokenizer_fixtures.py
Output: tests/fixtures/tokenizer/ (each file < 60 KB, committed; CI has no Python), or the
folder given by --out-dir (tests/interop_tokenizer.sh regenerates them with the installed
`tokenizers` and runs test_tokenizer on that folder).
"""
import argparse
import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TRAIN_CORPUS = """
The quick brown fox jumps over the lazy dog. A tokenizer splits text into pieces that a
language model can count, and the pieces it learns depend on the text it was trained on.
Training a model means showing it many examples and nudging its weights after each one.
We write the numbers 12, 345, 6789 and 2024 as digits; sometimes 3.14159 or -42 or 1,000,000.
It's the model's job to predict the next token, and it'll get better if the data is clean.
They've said they're ready; we'd like to see what you'll do when the tests are green.
def train(model, data, steps=100):
    for step in range(steps):
        loss = model.forward(data[step])
        loss.backward()
    return model

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("%s\\n", argv[i]);
    return 0;
}
Fine-tuning adapts a pretrained network to a new task with a small learning rate.
Low-rank adapters train two thin matrices beside each frozen weight matrix.
Gradients flow backward through attention, normalization and the feed-forward layers.
The optimizer keeps running averages of the gradient and of its square for every weight.
Evaluation runs on held-out problems so that the score measures generalisation.
Ensuite, le modèle apprend à prédire le mot suivant; über die Straße gehen; señor niño.
Ελληνικά γράμματα και русский текст встречаются тоже. 日本語の文章と中文的句子。
print("hello world") # comment
x = [1, 2, 3]; y = {"a": 1, "b": 2}; z = x[0] + y["a"]
Data loaders shuffle documents with a seed so that every run sees the same order.
Checkpoints are written to a temporary name and renamed, so a crash never corrupts them.
"""

TEST_TEXTS = [
    "Hello world! This is a test.",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # square\n\tif (a<=b) { c++; }\n",
    "naïve café — résumé, Zürich; Ελληνικά, русский текст",
    "I ❤️ 🦀 and 👩‍👩‍👧 emoji 🎉🎉!",
    "a  b   c\n\n\n  d\t\t e   \r\n end   ",
    "1234567 3.14159 -42 1,000,000 x2 007 2024-01-31",
    "日本語のテキスト、中文字符和한국어",
    "I'm sure you'll see they've done it. DON'T SHOUT'S We'D",
    "<|endoftext|>Hello<|endoftext|> world <|im_start|>user\nhi<|im_end|>",
    "<|begin_of_text|>text<|eot_id|><|end_of_text|>",
    "almost special <|endoftext and <|end|> and <|im_start",
    "fill the <mask> here and   <mask>there",
    "x[TOOL]y [TOOL] z\n[TOOL]",
    "",
    "   ",
    "\n",
    "a\u0085b\u00a0c\u3000d\u001ce\u2028f\u200bg",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "The year 2024: it's 50% off!!! $19.99 (USD)... ok?!",
    "tokenizer training pretrained generalisation checkpoints",
    "Training TRAINING training. Evaluation evaluation",
    "\ttabs\tand\ttrailing\t",
    "mixed\r\nline\rendings\n\r\n",
    "<s>Hello</s> world <unk> <0x41>",
    "Cafe\u0301 and e\u0301",  # decomposed: NFC changes it
]

# Cases where the text is cut in the middle of multi-byte characters (decode must replace).
PREFIX_DECODE_TEXTS = ["日本語 🦀 ❤️ naïve", "👩‍👩‍👧 emoji"]


def byte_level_trainer(vocab_size, special_tokens=()):
    return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1,
                               special_tokens=list(special_tokens), show_progress=False,
                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def train(tok, vocab_size, special_tokens=()):
    tok.train_from_iterator(TRAIN_CORPUS.split("\n"), byte_level_trainer(vocab_size,
                                                                         special_tokens))
    return tok


def gpt2_style():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    train(tok, 256 + 2 + 420, special_tokens=["<|endoftext|>", "<|im_start|>"])
    data = json.loads(tok.to_str())
    # A RoBERTa-like <mask> (lstrip) and a non-special single-word token.
    next_id = max(data["model"]["vocab"].values()) + 1
    data["added_tokens"] += [
        {"id": next_id, "content": "<mask>", "single_word": False, "lstrip": True,
         "rstrip": False, "normalized": False, "special": True},
        {"id": next_id + 1, "content": "[TOOL]", "single_word": True, "lstrip": False,
         "rstrip": False, "normalized": False, "special": False},
        {"id": next_id + 2, "content": "<|im_end|>", "single_word": False, "lstrip": False,
         "rstrip": True, "normalized": False, "special": True},
    ]
    for t in data["added_tokens"]:
        data["model"]["vocab"].setdefault(t["content"], t["id"])
    return data


def llama3_style():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    train(tok, 256 + 400)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    # Whole words in the vocabulary that the merges alone do not produce: only
    # ignore_merges turns them into one token.
    plain = Tokenizer.from_str(tok.to_str())
    extra = 0
    for word in ["Ġtokenizer", "Ġpretrained", "Ġcheckpoints", "Training", "Ġevaluation"]:
        pieces = plain.model.tokenize(word)
        if len(pieces) > 1 and word not in vocab:
            vocab[word] = len(vocab)
            extra += 1
    assert extra >= 3, "ignore_merges fixture needs words the merges do not reach"
    next_id = len(vocab)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    data["added_tokens"] = [
        {"id": next_id + i, "content": s, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True} for i, s in enumerate(specials)]
    bos = next_id
    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos],
                                                      "tokens": ["<|begin_of_text|>"]}}},
        ],
    }
    return data


def qwen2_style():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                              use_regex=False)
    train(tok, 256 + 300)
    data = json.loads(tok.to_str())
    next_id = len(data["model"]["vocab"])
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    data["added_tokens"] = [
        {"id": next_id + i, "content": s, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True} for i, s in enumerate(specials)]
    # Legacy merges: "a b" strings instead of pairs.
    data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    return data


def sentencepiece_style(ascii_alphabet=False, byte_fallback=True):
    """BPE over Metaspace words (no merge crosses a word), SentencePiece conventions.

    ascii_alphabet trains on the corpus without its non-ASCII characters, so those become
    <unk> (the trainer's limit_alphabet would do it too, but breaks frequency ties at random:
    the fixture changed from run to run)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=byte_fallback, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always",
                                                 split=True)
    trainer = trainers.BpeTrainer(vocab_size=620, min_frequency=1, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"])
    lines = TRAIN_CORPUS.split("\n")
    if ascii_alphabet:
        lines = ["".join(ch for ch in line if ord(ch) < 128) for line in lines]
    tok.train_from_iterator(lines, trainer)
    data = json.loads(tok.to_str())
    bos = data["model"]["vocab"]["<s>"]
    data["post_processor"] = json.loads(processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]).__getstate__())
    return data


def llama2_style():
    data = sentencepiece_style()
    vocab = data["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    data["normalizer"] = json.loads(normalizers.Sequence([
        normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]).__getstate__())
    data["pre_tokenizer"] = None
    data["decoder"] = json.loads(decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0)]).__getstate__())
    return data


def metaspace_style():
    data = sentencepiece_style(ascii_alphabet=True, byte_fallback=False)
    data["pre_tokenizer"] = json.loads(pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first", split=False).__getstate__())
    data["decoder"] = json.loads(decoders.Metaspace(
        replacement="\u2581", prepend_scheme="first", split=False).__getstate__())
    return data


def split_base():
    """A tiny tokenizer whose Split step the C test rewrites (behaviour, invert)."""
    tok = Tokenizer(models.BPE())
    # Trained without the split, so merges join delimiters and letters ("e-", "-t", ",,"),
    # and the split behaviours give different tokens.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SPLIT_TEXTS * 3 + ["one-two three-four,five,,six - x--y a b-c"] * 5,
                            byte_level_trainer(256 + 60))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[-,]+| "), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return json.loads(tok.to_str())


SPLIT_TEXTS = ["one-two,,three - four--five", "-lead,trail-", "a b  c", "", "x12-345 6,7"]
META_TEXTS = ["Hello world", " leading space", "two  spaces<s>after special", ""]
SPLIT_BEHAVIOURS = ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]


def fingerprint(data):
    """ctune's tokenizer fingerprint (docs/data.md), computed independently of the C code."""
    h = 0xCBF29CE484222325

    def feed(b):
        nonlocal h
        for x in b:
            h = ((h ^ x) * 0x100000001B3) % (1 << 64)

    feed(b"ctune-tokenizer-fingerprint-v1\n")
    vocab = data["model"]["vocab"]
    for token, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        raw = token.encode()
        feed(f"v {i} {len(raw)} ".encode() + raw + b"\n")
    for m in data["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        feed(f"m {vocab[a]} {vocab[b]} \n".encode())
    added = {vocab.get(t["content"], t["id"]): t for t in data["added_tokens"]}
    for i in sorted(added):
        feed(f"a {i} {int(added[i]['special'])} ".encode() + added[i]["content"].encode() + b"\n")
    return f"{h:016x}"


def dump(name, data):
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    assert len(text.encode()) < 60_000, f"{name} is {len(text.encode())} bytes"
    return Tokenizer.from_str(text)


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {"cases": [], "prefix_decodes": [], "split_cases": [], "lookups": []}
    for name, data in [("gpt2.json", gpt2_style()), ("llama3.json", llama3_style()),
                       ("qwen2.json", qwen2_style()), ("llama2.json", llama2_style()),
                       ("metaspace.json", metaspace_style())]:
        if name == "metaspace.json":
            meta = data
        tok = dump(name, data)
        for text in TEST_TEXTS:
            ids = tok.encode(text, add_special_tokens=False).ids
            ids_special = tok.encode(text, add_special_tokens=True).ids
            expected["cases"].append({
                "tokenizer": name, "text": text, "ids": ids, "ids_special": ids_special,
                "decoded": tok.decode(ids_special, skip_special_tokens=False),
                "decoded_skip": tok.decode(ids_special, skip_special_tokens=True)})
        for text in PREFIX_DECODE_TEXTS:
            ids = tok.encode(text, add_special_tokens=False).ids
            expected["prefix_decodes"].append({
                "tokenizer": name, "ids": ids,
                "decoded": [tok.decode(ids[:k], skip_special_tokens=False)
                            for k in range(len(ids) + 1)]})
        for content in ["<|endoftext|>", "<|begin_of_text|>", "<mask>", "Ġthe", "the", "a",
                        "Ġ", "no-such-token", "<s>", "<0x41>", "\u2581the"]:
            expected["lookups"].append({"tokenizer": name, "token": content,
                                        "id": tok.token_to_id(content)})
        expected["lookups"].append({"tokenizer": name, "vocab_size":
                                    tok.get_vocab_size(with_added_tokens=True),
                                    "fingerprint": fingerprint(data)})
    base = split_base()
    dump("split.json", base)
    # Variants: the C test replaces `find` in the base file by `step` (compact JSON, as the
    # fixtures are written) and compares ids.
    compact = {"separators": (",", ":"), "ensure_ascii": False}
    base_step = base["pre_tokenizer"]["pretokenizers"][0]
    steps = []
    for behaviour in SPLIT_BEHAVIOURS:
        for invert in (False, True):
            steps.append(dict(base_step, behavior=behaviour, invert=invert))
    steps.append(dict(base_step, pattern={"String": "-"}, behavior="MergedWithNext"))
    steps.append({"type": "Digits", "individual_digits": True})
    steps.append({"type": "Digits", "individual_digits": False})
    variants = [("split.json", base, ["pre_tokenizer", "pretokenizers", 0], s) for s in steps]
    meta_step = meta["pre_tokenizer"]
    for scheme in ("always", "first", "never"):
        for split in (False, True):
            variants.append(("metaspace.json", meta, ["pre_tokenizer"],
                             dict(meta_step, prepend_scheme=scheme, split=split)))
    for file, data, path, step in variants:
        variant = json.loads(json.dumps(data))
        parent = variant
        for key in path[:-1]:
            parent = parent[key]
        find = json.dumps(parent[path[-1]], **compact)
        parent[path[-1]] = step
        tok = Tokenizer.from_str(json.dumps(variant))
        texts = SPLIT_TEXTS if file == "split.json" else META_TEXTS
        for text in texts:
            expected["split_cases"].append({
                "base": file, "find": find, "step": json.dumps(step, **compact), "text": text,
                "ids": tok.encode(text).ids})
    # One file per tokenizer (and one for the variants), one case per line: readable diffs,
    # each file under 60 KB.
    files = {}
    for key, items in expected.items():
        for item in items:
            stem = item.get("tokenizer", "variants").replace(".json", "")
            files.setdefault(stem, {}).setdefault(key, []).append(item)
    for stem, groups in files.items():
        lines = []
        for key, items in groups.items():
            body = ",\n".join("  " + json.dumps(item, ensure_ascii=False, separators=(",", ":"))
                              for item in items)
            lines.append(f' "{key}": [\n{body}\n ]')
        text = "{\n" + ",\n".join(lines) + "\n}\n"
        name = f"expected_{stem}.json"
        assert len(text.encode()) < 60_000, f"{name} is {len(text.encode())} bytes"
        with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
            f.write(text)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=OUT, help=f"where to write (default {OUT})")
    OUT = parser.parse_args().out_dir
    main()
