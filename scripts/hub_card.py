#!/usr/bin/env python3
"""Checks a ctune output folder before it goes to the Hugging Face Hub, offline.

    hub_card.py check FOLDER [--base-model OWNER/NAME]
    hub_card.py stage FOLDER STAGING --base-model OWNER/NAME

check: the folder holds a complete adapter (adapter_config.json + adapter_model.safetensors)
or full model (config.json + model.safetensors, or an index whose every shard exists), and
README.md's YAML front matter is what the Hub accepts: a mapping that huggingface_hub's
ModelCard parses (model-index included), library_name peft|transformers matching the
folder, pipeline_tag text-generation, a license, tags holding base_model:adapter:<base> or
base_model:finetune:<base>, and base_model a Hub id (owner/name) -- a local folder name
(ctune writes the base folder's name when the base config has no Hub id) is refused with
the hint to pass --base-model. Prints one JSON line describing the card; exits 1 with
"hub_card: FILE: problem" on stderr otherwise.

stage: makes STAGING a copy of FOLDER to upload (weights hard-linked where the file
system allows, else copied) with base_model, its tag and adapter_config.json's
base_model_name_or_path set to the given id, then checks it as above.
"""
import argparse
import json
import os
import re
import shutil
import sys

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# ctune's training state and temporary files never go to the Hub.
NOT_UPLOADED = ("state",)


class CardError(Exception):
    pass


def split_front_matter(path):
    text = open(path, encoding="utf-8").read()
    if not text.startswith("---\n"):
        raise CardError(f"{path}: line 1: expected '---' opening the YAML front matter")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise CardError(f"{path}: front matter has no closing '---' line")
    return text[4:end], text[end + 5:]


def folder_kind(folder):
    def has(name):
        return os.path.isfile(os.path.join(folder, name))

    if has("adapter_config.json"):
        if not has("adapter_model.safetensors"):
            raise CardError(f"{folder}: adapter_config.json without adapter_model.safetensors")
        return "lora"
    if not has("config.json"):
        raise CardError(f"{folder}: neither adapter_config.json (LoRA) nor config.json (full model)")
    if has("model.safetensors.index.json"):
        index_path = os.path.join(folder, "model.safetensors.index.json")
        try:
            weight_map = json.load(open(index_path, encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CardError(f"{index_path}: not a safetensors index with a weight_map ({e})")
        for shard in sorted(set(weight_map.values())):
            if not has(shard):
                raise CardError(f"{index_path}: shard {shard!r} is missing from the folder")
    elif not has("model.safetensors"):
        raise CardError(f"{folder}: config.json without model.safetensors or its index")
    return "full"


def check(folder, base_model=None, hub_base=True):
    import yaml
    from huggingface_hub import ModelCard

    kind = folder_kind(folder)
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        raise CardError(f"{path}: missing (the model card)")
    front, _ = split_front_matter(path)
    try:
        meta = yaml.safe_load(front)
    except yaml.YAMLError as e:
        raise CardError(f"{path}: front matter is not valid YAML: {e}")
    if not isinstance(meta, dict):
        raise CardError(f"{path}: front matter is not a mapping")
    want_library = "peft" if kind == "lora" else "transformers"
    if meta.get("library_name") != want_library:
        raise CardError(f"{path}: library_name {meta.get('library_name')!r}, expected {want_library!r}")
    if meta.get("pipeline_tag") != "text-generation":
        raise CardError(f"{path}: pipeline_tag {meta.get('pipeline_tag')!r}, expected 'text-generation'")
    for key in ("base_model", "license", "tags"):
        if key not in meta:
            raise CardError(f"{path}: front matter lacks '{key}'")
    base = meta["base_model"]
    if base_model is not None and base != base_model:
        raise CardError(f"{path}: base_model {base!r}, expected {base_model!r}")
    if hub_base and (not isinstance(base, str) or not HUB_ID.match(base)):
        raise CardError(f"{path}: base_model {base!r} is not a Hub id (owner/name); "
                        "the Hub refuses it -- pass --base-model OWNER/NAME")
    relation = "adapter" if kind == "lora" else "finetune"
    if not isinstance(meta["tags"], list) or f"base_model:{relation}:{base}" not in meta["tags"]:
        raise CardError(f"{path}: tags lack 'base_model:{relation}:{base}'")
    try:
        card = ModelCard.load(path)  # parses model-index into EvalResults; raises if malformed
    except Exception as e:  # huggingface_hub raises ValueError/KeyError/TypeError variously
        raise CardError(f"{path}: huggingface_hub's ModelCard refuses it: {type(e).__name__}: {e}")
    results = card.data.eval_results or []
    return {
        "kind": kind,
        "base_model": base,
        "library_name": meta["library_name"],
        "license": meta["license"],
        "tags": meta["tags"],
        "eval_results": {r.metric_type: r.metric_value for r in results},
    }


def set_base_model(readme, base_model, kind):
    """Rewrites base_model and its tag in the front matter, leaving the rest byte-identical."""
    import yaml

    front, body = split_front_matter(readme)
    meta = yaml.safe_load(front)
    old = meta.get("base_model")
    relation = "adapter" if kind == "lora" else "finetune"
    quoted = json.dumps(base_model)  # a JSON string is a valid YAML double-quoted scalar
    lines = []
    for line in front.split("\n"):
        if line.startswith("base_model:"):
            line = f"base_model: {quoted}"
        elif old is not None and line.startswith("- ") and yaml.safe_load(line[2:]) == f"base_model:{relation}:{old}":
            line = "- " + json.dumps(f"base_model:{relation}:{base_model}")
        lines.append(line)
    if not any(line.startswith("base_model:") for line in lines):
        lines.insert(0, f"base_model: {quoted}")
    text = "---\n" + "\n".join(lines) + "\n---\n" + body
    if old is not None:  # the body names the base in its first line
        text = text.replace(f"`{old}`", f"`{base_model}`")
    # The load snippet names the base by its local path; on the Hub it is the id.
    text = re.sub(r'(base = AutoModelForCausalLM\.from_pretrained\()"[^"]*"',
                  lambda m: m.group(1) + json.dumps(base_model), text)
    return text


def stage(folder, staging, base_model):
    if not HUB_ID.match(base_model):
        raise CardError(f"--base-model {base_model!r} is not a Hub id (owner/name)")
    kind = check(folder, hub_base=False)["kind"]  # problems named in the user's folder
    if os.path.exists(staging):
        raise CardError(f"{staging}: already exists")
    os.makedirs(staging)
    for name in sorted(os.listdir(folder)):
        src = os.path.join(folder, name)
        if name in NOT_UPLOADED or name.endswith(".tmp") or not os.path.isfile(src):
            continue
        dst = os.path.join(staging, name)
        if name == "README.md":
            open(dst, "w", encoding="utf-8").write(set_base_model(src, base_model, kind))
        elif name == "adapter_config.json":
            config = json.load(open(src, encoding="utf-8"))
            config["base_model_name_or_path"] = base_model
            # ctune's form (and peft's): sorted keys, two-space indent.
            open(dst, "w", encoding="utf-8").write(json.dumps(config, indent=2, sort_keys=True))
        else:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    return check(staging, base_model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check")
    p_check.add_argument("folder")
    p_check.add_argument("--base-model")
    p_stage = sub.add_parser("stage")
    p_stage.add_argument("folder")
    p_stage.add_argument("staging")
    p_stage.add_argument("--base-model", required=True)
    args = parser.parse_args()
    try:
        if args.command == "check":
            result = check(args.folder, args.base_model)
        else:
            result = stage(args.folder, args.staging, args.base_model)
    except CardError as e:
        print(f"hub_card: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
