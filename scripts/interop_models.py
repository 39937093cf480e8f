#!/usr/bin/env python3
"""Proves that ctune's outputs load unchanged in the Hugging Face stack and compute the same.

    interop_models.py --ctune BUILD/ctune --source REPO --work EMPTY_DIR

For random models that transformers itself creates (Llama with GQA, untied and tied; Qwen2
with q/k/v biases; Qwen3 with q/k norms and an explicit head_dim), each given the byte
tokenizer of `ctune init --preset tiny` so that ctune's synthetic addition task trains them:

  a. a short LoRA run (all linear targets) -> final/ loads with peft.PeftModel.from_pretrained
     with no missing or unexpected adapter keys, every lora_B is non-zero, and peft's logits
     equal `ctune eval --adapter ... --logits-out`'s (max |diff| / max |logit| <= 1e-4);
  b. a short full fine-tuning run -> final/ loads with AutoModelForCausalLM with no missing,
     unexpected or mismatched keys and the same logits as ctune's;
  c. `ctune merge` of the adapter -> loads with transformers, gives the adapter's logits, and
     holds the same tensors as peft's merge_and_unload() (max |diff| / max |w| <= 1e-6 each).

Prints one summary line per model and exits 1 naming every check that failed.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_hub_folder as hub  # noqa: E402  (the shared loading and card checks)

LOGIT_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-6
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class CheckFailed(Exception):
    pass


def require(cond, message):
    if not cond:
        raise CheckFailed(message)


def run(cmd, what):
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise CheckFailed(f"{what} exited {result.returncode}:\n$ {' '.join(cmd)}\n{result.stdout[-3000:]}")
    return result.stdout


def model_configs(preset):
    """The random architectures, sized like the tiny preset but smaller, same vocabulary."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=preset["vocab_size"], hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, rms_norm_eps=1e-6, initializer_range=0.08,
                  bos_token_id=preset["bos_token_id"], eos_token_id=preset["eos_token_id"],
                  pad_token_id=preset.get("pad_token_id"))
    return [
        ("llama", LlamaConfig(**common, tie_word_embeddings=False, rope_theta=10000.0)),
        # Llama 3 RoPE scaling (written by transformers 5 as rope_parameters), tied embeddings.
        ("llama3-tied", LlamaConfig(**common, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
        ("qwen2", Qwen2Config(**common, tie_word_embeddings=False)),
        # head_dim 32 with hidden 64 and 4 heads: the explicit head_dim is not hidden / heads.
        ("qwen3", Qwen3Config(**common, head_dim=32, tie_word_embeddings=False)),
    ]


def make_model(folder, config, preset_dir, seed):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # transformers initialises norms to 1 and biases to 0; random ones make sure that
        # ctune reads and applies them (a dropped bias or norm would not show otherwise).
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(preset_dir, name), os.path.join(folder, name))


def ctune_logits(args, ids, model_dir, adapter_dir, out_path):
    import torch

    cmd = [args.ctune, "eval", "--model", model_dir, "--ids", ",".join(map(str, ids)), "--logits-out", out_path]
    if adapter_dir:
        cmd += ["--adapter", adapter_dir]
    run(cmd, "ctune eval --logits-out")
    with open(out_path) as f:
        data = json.load(f)
    require(data["ids"] == ids, f"{out_path}: ids {data['ids']} differ from the ids asked for")
    return torch.tensor(data["logits"], dtype=torch.float32)


def relative_diff(a, b):
    """max |a - b| / max |b| (b the reference)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def compare_logits(what, theirs, ours):
    require(theirs.shape == ours.shape, f"{what}: logits shape {tuple(ours.shape)} vs {tuple(theirs.shape)}")
    diff = relative_diff(ours, theirs)
    require(diff <= LOGIT_TOLERANCE, f"{what}: ctune's logits differ from Hugging Face's by "
                                     f"{diff:.3g} of the largest logit (tolerance {LOGIT_TOLERANCE:g})")
    return diff


def safetensors_folder(folder):
    from safetensors.torch import load_file

    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, name)))
    return tensors


SHARD_BYTES = 100_000


def require_sharded(folder):
    index_path = os.path.join(folder, "model.safetensors.index.json")
    require(os.path.isfile(index_path), f"{folder}: expected shards and model.safetensors.index.json")
    shards = set(json.load(open(index_path))["weight_map"].values())
    require(len(shards) > 1, f"{index_path}: expected several shards, got {sorted(shards)}")
    require(not os.path.exists(os.path.join(folder, "model.safetensors")),
            f"{folder}: both model.safetensors and an index")


def train(args, recipe, model_dir, data_dir, out_dir, extra=()):
    overrides = [f"model.path={model_dir}", f"data.train={data_dir}/train.h5", f"data.eval={data_dir}/eval.h5",
                 "data.synthetic_train_examples=2000", "data.synthetic_eval_examples=32",
                 f"train.max_steps={args.steps}", "optim.warmup_steps=2", "train.eval_every=0",
                 "train.log_every=10", "checkpoint.every=0", f"checkpoint.output_dir={out_dir}", *extra]
    run([args.ctune, "train", os.path.join(args.source, "configs", "tiny", recipe), *overrides], f"ctune train {recipe}")
    final = os.path.join(out_dir, "final")
    require(os.path.isdir(final), f"{final}: missing after training")
    return final


def check_model(args, name, config, preset_dir, seed):
    import torch
    from transformers import AutoModelForCausalLM

    work = os.path.join(args.work, name)
    base_dir = os.path.join(work, "base")
    make_model(base_dir, config, preset_dir, seed)
    data_dir = os.path.join(args.work, "data")  # shared: every model has the same tokenizer
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (args.seq,), generator=gen).tolist()
    with torch.no_grad():
        base_logits = hub.sequence_logits(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), ids)
    # The untouched random model first: any disagreement here is the forward pass or the loader.
    base_diff = compare_logits(f"{name} base model", base_logits,
                               ctune_logits(args, ids, base_dir, None, os.path.join(work, "base.json")))

    # a. LoRA
    lora_final = train(args, "lora.yaml", base_dir, data_dir, os.path.join(work, "lora"))
    hub.check_card(lora_final, "lora")
    adapter = safetensors_folder(lora_final)
    linear = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    expected = {f"base_model.model.model.layers.{i}.{mod}.lora_{ab}.weight"
                for i in range(config.num_hidden_layers) for mod in linear for ab in "AB"}
    require(set(adapter) == expected, f"{name}: adapter tensors are not the all-linear set: missing "
                                      f"{sorted(expected - set(adapter))[:3]}, extra {sorted(set(adapter) - expected)[:3]}")
    zero_b = [k for k, v in adapter.items() if "lora_B" in k and not v.abs().max() > 0]
    require(not zero_b, f"{name}: {len(zero_b)} lora_B tensors are still zero after training, e.g. {zero_b[:2]}")
    peft_model, missing, unexpected = hub.load_lora(lora_final, base_dir)
    require(not missing and not unexpected,
            f"{name} LoRA: peft expects keys the file lacks {missing[:4]} or ignores keys it has {unexpected[:4]}")
    peft_logits = hub.sequence_logits(peft_model, ids)
    require(relative_diff(peft_logits, base_logits) > 1e-3, f"{name} LoRA: the adapter does not change the logits")
    ctune_adapter_logits = ctune_logits(args, ids, base_dir, lora_final, os.path.join(work, "lora.json"))
    lora_diff = compare_logits(f"{name} LoRA (peft)", peft_logits, ctune_adapter_logits)

    # b. full fine-tuning
    # Shards of ~100 kB: the index path of transformers' loader, not only model.safetensors.
    full_final = train(args, "full.yaml", base_dir, data_dir, os.path.join(work, "full"),
                       extra=[f"checkpoint.max_shard_bytes={SHARD_BYTES}"])
    require_sharded(full_final)
    hub.check_card(full_final, "full")
    full_model, missing, unexpected = hub.load_full(full_final)
    require(not missing and not unexpected,
            f"{name} full: transformers reports missing {missing} and unexpected or mismatched {unexpected}")
    full_logits = hub.sequence_logits(full_model, ids)
    require(relative_diff(full_logits, base_logits) > 1e-3, f"{name} full: training did not change the logits")
    full_diff = compare_logits(f"{name} full fine-tune (transformers)", full_logits,
                               ctune_logits(args, ids, full_final, None, os.path.join(work, "full.json")))

    # c. merge
    merged_dir = os.path.join(work, "merged")
    run([args.ctune, "merge", lora_final, "--base", base_dir, "-o", merged_dir,
         "--max-shard-bytes", str(SHARD_BYTES)], "ctune merge")
    require_sharded(merged_dir)
    merged_model, missing, unexpected = hub.load_full(merged_dir)
    require(not missing and not unexpected,
            f"{name} merged: transformers reports missing {missing} and unexpected or mismatched {unexpected}")
    merged_logits = hub.sequence_logits(merged_model, ids)
    merged_vs_ctune = compare_logits(f"{name} merged (transformers vs ctune eval)", merged_logits,
                                     ctune_logits(args, ids, merged_dir, None, os.path.join(work, "merged.json")))
    merged_vs_adapter = compare_logits(f"{name} merged model vs ctune's adapter", merged_logits, ctune_adapter_logits)
    reference = peft_model.merge_and_unload().state_dict()
    written = safetensors_folder(merged_dir)
    extra = sorted(set(written) - set(reference))
    absent = sorted(set(reference) - set(written) - ({"lm_head.weight"} if config.tie_word_embeddings else set()))
    require(not extra and not absent, f"{name} merged: tensors only in ctune's file {extra}, only in peft's {absent}")
    weight_diff = 0.0
    for key in sorted(written):
        got, want = written[key].float(), reference[key].float()
        require(got.shape == want.shape, f"{name} merged: {key} shape {tuple(got.shape)} vs peft {tuple(want.shape)}")
        diff = relative_diff(got, want)
        require(diff <= WEIGHT_TOLERANCE,
                f"{name} merged: {key} differs from peft's merge_and_unload by {diff:.3g} (tolerance {WEIGHT_TOLERANCE:g})")
        weight_diff = max(weight_diff, diff)

    return (f"{name:<11} base {base_diff:.1e}  lora {lora_diff:.1e}  full {full_diff:.1e}  "
            f"merged {merged_vs_ctune:.1e} (vs adapter {merged_vs_adapter:.1e})  "
            f"merge weights {weight_diff:.1e} over {len(written)} tensors")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ctune", required=True, help="the ctune binary")
    parser.add_argument("--source", required=True, help="the ctune source tree (for configs/tiny)")
    parser.add_argument("--work", required=True, help="an empty scratch folder")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    parser.add_argument("--seq", type=int, default=12, help="length of the compared token sequence")
    parser.add_argument("--only", help="comma-separated model names to check (default all)")
    args = parser.parse_args()
    args.ctune = os.path.abspath(args.ctune)
    args.work = os.path.abspath(args.work)

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    preset_dir = os.path.join(args.work, "preset")
    run([args.ctune, "init", "--preset", "tiny", "-o", preset_dir], "ctune init")
    with open(os.path.join(preset_dir, "config.json")) as f:
        preset = json.load(f)

    failures = []
    started = time.time()
    configs = model_configs(preset)
    if args.only:
        wanted = set(args.only.split(","))
        configs = [c for c in configs if c[0] in wanted]
    for seed, (name, config) in enumerate(configs):
        try:
            print(check_model(args, name, config, preset_dir, 1000 + seed), flush=True)
        except CheckFailed as e:
            failures.append(f"{name}: {e}")
            print(f"FAIL {name}: {e}", flush=True)
        except SystemExit:  # check_hub_folder.fail has printed its message
            failures.append(f"{name}: check_hub_folder failed (message above)")
            print(f"FAIL {name}: check_hub_folder failed (message above)", flush=True)
    print(f"interop_models: {len(configs) - len(failures)} of {len(configs)} models pass "
          f"({time.time() - started:.0f} s)")
    if failures:
        print("interop_models: FAILED\n  " + "\n  ".join(f.splitlines()[0] for f in failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
