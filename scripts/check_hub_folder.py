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


def fail(message):
    print(f"check_hub_folder: {message}", file=sys.stderr)
    sys.exit(1)


def check_card(folder, kind):
    import yaml
    from huggingface_hub import ModelCard

    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        fail(f"{path}: missing")
    text = open(path, encoding="utf-8").read()
    if not text.startswith("---\n"):
        fail(f"{path}: does not start with a '---' front matter line")
    end = text.find("\n---\n", 4)
    if end < 0:
        fail(f"{path}: front matter has no closing '---' line")
    meta = yaml.safe_load(text[4:end])
    if not isinstance(meta, dict):
        fail(f"{path}: front matter is not a mapping")
    want_library = "peft" if kind == "lora" else "transformers"
    if meta.get("library_name") != want_library:
        fail(f"{path}: library_name {meta.get('library_name')!r}, expected {want_library!r}")
    if meta.get("pipeline_tag") != "text-generation":
        fail(f"{path}: pipeline_tag {meta.get('pipeline_tag')!r}")
    for key in ("base_model", "license", "tags"):
        if key not in meta:
            fail(f"{path}: front matter lacks '{key}'")
    if kind == "lora" and f"base_model:adapter:{meta['base_model']}" not in meta["tags"]:
        fail(f"{path}: tags lack base_model:adapter:{meta['base_model']}")
    card = ModelCard.load(path)  # parses model-index into eval results; raises if malformed
    results = card.data.eval_results or []
    return {
        "base_model": meta["base_model"],
        "library_name": meta["library_name"],
        "tags": meta["tags"],
        "eval_results": {r.metric_type: r.metric_value for r in results},
    }


def check_adapter_config(folder):
    path = os.path.join(folder, "adapter_config.json")
    text = open(path, encoding="utf-8").read()
    config = json.loads(text)
    if text.rstrip("\n") != json.dumps(config, indent=2, sort_keys=True):
        fail(f"{path}: not in json.dumps(indent=2, sort_keys=True) form")
    return config


def load_lora(folder, base):
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from transformers import AutoModelForCausalLM

    config = check_adapter_config(folder)
    base = base or config.get("base_model_name_or_path")
    if not base:
        fail("adapter_config.json has no base_model_name_or_path; pass --base")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        lora_config = LoraConfig.from_pretrained(folder)
        model = get_peft_model(model, lora_config)
        result = set_peft_model_state_dict(model, load_peft_weights(folder, device="cpu"))
    for w in caught:
        if "missing adapter keys" in str(w.message) or "unexpected" in str(w.message).lower():
            fail(f"peft warned: {w.message}")
    # missing_keys covers the whole model; only adapter weights must come from the file.
    missing = [k for k in result.missing_keys if "lora_" in k]
    unexpected = list(result.unexpected_keys)
    return model, missing, unexpected


def load_full(folder):
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    missing = list(info.get("missing_keys", []))
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = [str(x) for x in info.get("mismatched_keys", [])]
    return model, missing, unexpected + mismatched


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
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.long)).logits[0].float()
    print(json.dumps({"kind": kind, "missing": missing, "unexpected": unexpected, "card": card,
                      "logits": logits.tolist()}))


if __name__ == "__main__":
    main()
