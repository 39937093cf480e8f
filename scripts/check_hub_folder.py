#!/usr/bin/env python3
"""Checks that a ctune output folder loads with the Hugging Face stack, unchanged.

    check_hub_folder.py FOLDER [--base BASE_FOLDER] [--ids 1,2,3]

A LoRA folder (adapter_config.json) is applied to its base with peft; a full folder
(config.json) is loaded with transformers' AutoModelForCausalLM. Either way the load must
report no missing, unexpected or mismatched keys (peft only warns on missing adapter keys
and then runs a no-op adapter; this script fails instead). adapter_config.json must be
exactly what json.dumps(indent=2, sort_keys=True) prints. README.md's front matter must
parse with yaml.safe_load and with huggingface_hub's ModelCard (model-index included).

Prints one JSON object on stdout: {"kind", "missing", "unexpected", "card", "logits"} where
logits is [len(ids)][vocab] for the ids given (float32 model, no dropout). Exits 1 with a
message on stderr when a check fails.
"""
import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # hub_card.py


def fail(message):
    print(f"check_hub_folder: {message}", file=sys.stderr)
    sys.exit(1)


def check_card(folder, kind):
    """The card checks of scripts/hub_card.py, short of requiring a Hub id as base_model
    (a base made locally has none until it is pushed)."""
    import hub_card

    try:
        card = hub_card.check(folder, hub_base=False)
    except hub_card.CardError as e:
        fail(str(e))
    if card["kind"] != kind:
        fail(f"{folder}: a {card['kind']} folder, expected {kind}")
    return card


def check_adapter_config(folder):
    path = os.path.join(folder, "adapter_config.json")
    text = open(path, encoding="utf-8").read()
    config = json.loads(text)
    if text.rstrip("\n") != json.dumps(config, indent=2, sort_keys=True):
        fail(f"{path}: not in json.dumps(indent=2, sort_keys=True) form")
    return config


def load_lora(folder, base):
    """PeftModel.from_pretrained on a float32 base, failing where peft would only warn.

    Returns (model, missing, unexpected): adapter keys the model expects but the file lacks,
    and keys the file has that the model does not use. Every adapter tensor loaded must also
    equal the file's bit for bit (a silently converted or ignored tensor is a failure)."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights
    from transformers import AutoModelForCausalLM

    config = check_adapter_config(folder)
    base = base or config.get("base_model_name_or_path")
    if not base:
        fail("adapter_config.json has no base_model_name_or_path; pass --base")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, folder)
    for w in caught:
        text = str(w.message)
        if "missing adapter keys" in text or "unexpected" in text.lower():
            fail(f"peft warned: {text}")
    stored = load_peft_weights(folder, device="cpu")
    loaded = get_peft_model_state_dict(model)
    missing = sorted(set(loaded) - set(stored))
    unexpected = sorted(set(stored) - set(loaded))
    for key in sorted(set(stored) & set(loaded)):
        if stored[key].shape != loaded[key].shape or not torch.equal(stored[key].float(), loaded[key].float()):
            fail(f"{folder}: adapter tensor {key} loaded as something else than the file holds")
    return model, missing, unexpected


def load_full(folder):
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    missing = list(info.get("missing_keys", []))
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = [str(x) for x in info.get("mismatched_keys", [])]
    return model, missing, unexpected + mismatched


def sequence_logits(model, ids):
    """[len(ids), vocab] float32 logits of one sequence, eval mode (no dropout)."""
    import torch

    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long)).logits[0].float()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--base", help="base model folder for a LoRA adapter (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--ids", default="1,2,3,4", help="comma-separated token ids to run")
    args = parser.parse_args()

    import torch

    kind = "lora" if os.path.isfile(os.path.join(args.folder, "adapter_config.json")) else "full"
    card = check_card(args.folder, kind)
    if kind == "lora":
        model, missing, unexpected = load_lora(args.folder, args.base)
    else:
        model, missing, unexpected = load_full(args.folder)
    if missing or unexpected:
        fail(f"{args.folder}: missing keys {missing}, unexpected or mismatched keys {unexpected}")

    ids = [int(x) for x in args.ids.split(",") if x.strip()]
    logits = sequence_logits(model, ids)
    print(json.dumps({"kind": kind, "missing": missing, "unexpected": unexpected, "card": card,
                      "logits": logits.tolist()}))


if __name__ == "__main__":
    main()
