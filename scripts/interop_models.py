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
     holds the same tensors as peft's merge_and_unload() (max |diff| / max |w| <= 1e-6 each);
  d. a and c again for DoRA (`lora.use_dora=true`): the adapter also holds every
     lora_magnitude_vector, each moved away from its initial value (the base's row norms),
     and peft loads it as DoRA (use_dora) with the same logits and merge.

For one model (--grad-model, default qwen2: q/k/v biases, which DoRA must leave unscaled)
ctune's gradients are compared with peft's, tensor by tensor:

  e. ctune trains DoRA for 3 steps on 8 prompt/completion documents (`ctune prep`), one
     global batch of 8 rows, so every step sees every document; no clipping, no warmup. The
     training state of the step-1 and step-2 checkpoints gives step 2's gradient exactly
     enough, g2 = (exp_avg2 - beta1 exp_avg1) / (1 - beta1) (AdamW's first moment), taken at
     the step-1 parameters -- which the step-1 hub folder holds. peft loads that folder,
     computes the same loss (token cross-entropy summed over the documents / loss tokens) and
     backpropagates: the loss equals metrics.jsonl's step-2 loss (relative 1e-5) and every
     gradient (lora_A, lora_B, lora_magnitude_vector) ctune's (max |diff| / max |g| <= 1e-4).

Prints one summary line per model (two with DoRA, three with the gradients) and exits 1
naming every check that failed.
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
GRAD_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5
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

    # a. LoRA, d. DoRA
    lora = check_adapter(args, name, config, base_dir, data_dir, work, ids, base_logits, dora=False)
    dora = check_adapter(args, name, config, base_dir, data_dir, work, ids, base_logits, dora=True)

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

    # c. merge, of both adapters
    lora_merge = check_merge(args, name, config, base_dir, work, ids, lora)
    dora_merge = check_merge(args, name, config, base_dir, work, ids, dora)

    lines = [f"{name:<11} base {base_diff:.1e}  lora {lora['diff']:.1e}  full {full_diff:.1e}  {lora_merge}",
             f"{'':<11} dora {dora['diff']:.1e}  {dora_merge}"]
    # e. gradients
    if name == args.grad_model:
        lines.append(f"{'':<11} {check_gradients(args, name, config, base_dir, work)}")
    return "\n".join(lines)


def check_adapter(args, name, config, base_dir, data_dir, work, ids, base_logits, dora):
    """A short LoRA (or DoRA) run: the adapter's tensors, peft's load and logits (checks a, d)."""
    import torch

    kind = "DoRA" if dora else "LoRA"
    final = train(args, "lora.yaml", base_dir, data_dir, os.path.join(work, kind.lower()),
                  extra=["lora.use_dora=true"] if dora else [])
    hub.check_card(final, "lora")
    adapter_config = json.load(open(os.path.join(final, "adapter_config.json")))
    require(adapter_config.get("use_dora") is dora,
            f"{name} {kind}: adapter_config.json has use_dora {adapter_config.get('use_dora')!r}")
    adapter = safetensors_folder(final)
    linear = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    modules = [f"base_model.model.model.layers.{i}.{mod}" for i in range(config.num_hidden_layers) for mod in linear]
    expected = {f"{m}.lora_{ab}.weight" for m in modules for ab in "AB"}
    if dora:
        expected |= {f"{m}.lora_magnitude_vector" for m in modules}
    require(set(adapter) == expected, f"{name} {kind}: adapter tensors are not the all-linear set: missing "
                                      f"{sorted(expected - set(adapter))[:3]}, extra {sorted(set(adapter) - expected)[:3]}")
    zero_b = [k for k, v in adapter.items() if "lora_B" in k and not v.abs().max() > 0]
    require(not zero_b, f"{name} {kind}: {len(zero_b)} lora_B tensors are still zero after training, e.g. {zero_b[:2]}")
    if dora:
        # DoRA starts with m = ||W||_row (B = 0); training must have moved every magnitude.
        base = safetensors_folder(base_dir)
        untrained = []
        for m in modules:
            magnitude = adapter[f"{m}.lora_magnitude_vector"]
            weight = base[m.removeprefix("base_model.model.") + ".weight"].float()
            require(magnitude.shape == (weight.shape[0],),
                    f"{name} DoRA: {m}.lora_magnitude_vector has shape {tuple(magnitude.shape)}, expected ({weight.shape[0]},)")
            if not relative_diff(magnitude, weight.norm(dim=1)) > 1e-6:
                untrained.append(m)
        require(not untrained, f"{name} DoRA: {len(untrained)} magnitudes still equal the base's row norms "
                               f"(their init), e.g. {untrained[:2]}")
    peft_model, missing, unexpected = hub.load_lora(final, base_dir)
    require(not missing and not unexpected,
            f"{name} {kind}: peft expects keys the file lacks {missing[:4]} or ignores keys it has {unexpected[:4]}")
    if dora:
        n_dora = sum(1 for n, _ in peft_model.named_parameters() if "lora_magnitude_vector" in n)
        require(n_dora == len(modules), f"{name} DoRA: peft made {n_dora} DoRA magnitudes, expected {len(modules)}")
    peft_logits = hub.sequence_logits(peft_model, ids)
    require(relative_diff(peft_logits, base_logits) > 1e-3, f"{name} {kind}: the adapter does not change the logits")
    ctune_adapter_logits = ctune_logits(args, ids, base_dir, final, os.path.join(work, f"{kind.lower()}.json"))
    diff = compare_logits(f"{name} {kind} (peft)", peft_logits, ctune_adapter_logits)
    return {"kind": kind, "final": final, "peft": peft_model, "ctune_logits": ctune_adapter_logits, "diff": diff}


def check_merge(args, name, config, base_dir, work, ids, adapter):
    """ctune merge of an adapter vs transformers' load, ctune's adapter and peft's merge (c)."""
    kind = adapter["kind"]
    merged_dir = os.path.join(work, f"merged-{kind.lower()}")
    run([args.ctune, "merge", adapter["final"], "--base", base_dir, "-o", merged_dir,
         "--max-shard-bytes", str(SHARD_BYTES)], f"ctune merge ({kind})")
    require_sharded(merged_dir)
    merged_model, missing, unexpected = hub.load_full(merged_dir)
    require(not missing and not unexpected,
            f"{name} merged {kind}: transformers reports missing {missing} and unexpected or mismatched {unexpected}")
    merged_logits = hub.sequence_logits(merged_model, ids)
    merged_vs_ctune = compare_logits(f"{name} merged {kind} (transformers vs ctune eval)", merged_logits,
                                     ctune_logits(args, ids, merged_dir, None, os.path.join(work, f"merged-{kind}.json")))
    merged_vs_adapter = compare_logits(f"{name} merged {kind} model vs ctune's adapter", merged_logits,
                                       adapter["ctune_logits"])
    reference = adapter["peft"].merge_and_unload().state_dict()
    written = safetensors_folder(merged_dir)
    extra = sorted(set(written) - set(reference))
    absent = sorted(set(reference) - set(written) - ({"lm_head.weight"} if config.tie_word_embeddings else set()))
    require(not extra and not absent,
            f"{name} merged {kind}: tensors only in ctune's file {extra}, only in peft's {absent}")
    weight_diff = 0.0
    for key in sorted(written):
        got, want = written[key].float(), reference[key].float()
        require(got.shape == want.shape,
                f"{name} merged {kind}: {key} shape {tuple(got.shape)} vs peft {tuple(want.shape)}")
        diff = relative_diff(got, want)
        require(diff <= WEIGHT_TOLERANCE, f"{name} merged {kind}: {key} differs from peft's merge_and_unload by "
                                          f"{diff:.3g} (tolerance {WEIGHT_TOLERANCE:g})")
        weight_diff = max(weight_diff, diff)
    return (f"merged {merged_vs_ctune:.1e} (vs adapter {merged_vs_adapter:.1e})  "
            f"merge weights {weight_diff:.1e} over {len(written)} tensors")


GRAD_DOCS = 8
BETA1 = 0.9


def train_state(folder):
    """{parameter name: {"param", "exp_avg", "exp_avg_sq"}} from a single-rank checkpoint's state."""
    from safetensors.torch import load_file

    state_dir = os.path.join(folder, "state")
    parts = [n for n in os.listdir(state_dir) if n.endswith(".safetensors")]
    require(len(parts) == 1, f"{state_dir}: expected one rank's part, got {parts}")
    state = {}
    for key, value in load_file(os.path.join(state_dir, parts[0])).items():
        name, kind = key.rsplit("/", 1)
        kind, span = kind.split("[")
        require(span == f"0:{value.numel()}]", f"{state_dir}: {key}: expected the whole tensor in one piece")
        state.setdefault(name, {})[kind] = value.double()
    return state


def check_gradients(args, name, config, base_dir, work):
    """Step 2's gradients of a ctune DoRA run vs peft's at the same parameters and batch (e)."""
    import random

    import torch
    import torch.nn.functional as F

    grad_dir = os.path.join(work, "grad")
    os.makedirs(grad_dir)
    rng = random.Random(7)
    pairs = []
    for _ in range(GRAD_DOCS):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        pairs.append((f"{a}+{b}=", str(a + b)))
    jsonl = os.path.join(grad_dir, "train.jsonl")
    with open(jsonl, "w") as f:
        for prompt, completion in pairs:
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    data = os.path.join(grad_dir, "train.h5")
    run([args.ctune, "prep", "--tokenizer", base_dir, jsonl, "-o", data], "ctune prep")
    # The byte tokenizer: ids 0..255 are the bytes; a document is [bos] prompt completion eos
    # with the loss on the completion and eos (docs/data.md).
    docs = [([config.bos_token_id, *prompt.encode(), *completion.encode(), config.eos_token_id],
             len(prompt.encode()) + 1) for prompt, completion in pairs]
    loss_tokens = sum(len(doc) - first for doc, first in docs)
    seq_len = max(len(doc) for doc, _ in docs) - 1

    out_dir = os.path.join(grad_dir, "run")
    overrides = [f"model.path={base_dir}", f"data.train={data}", f"data.eval={data}", f"data.seq_len={seq_len}",
                 "data.pack=false", "lora.use_dora=true", "lora.dropout=0.0",
                 f"train.micro_batch_size={GRAD_DOCS}", f"train.global_batch_size={GRAD_DOCS}",
                 "train.max_steps=3", "train.eval_every=0", "train.log_every=1", "optim.warmup_steps=0",
                 "optim.grad_clip=0", "optim.weight_decay=0", f"optim.beta1={BETA1}", "precision=fp32",
                 "checkpoint.every=1", "checkpoint.keep_last=3", f"checkpoint.output_dir={out_dir}"]
    run([args.ctune, "train", os.path.join(args.source, "configs", "tiny", "lora.yaml"), *overrides],
        "ctune train (gradient check)")
    steps = {}
    for line in open(os.path.join(out_dir, "metrics.jsonl")):
        record = json.loads(line)
        if "loss" in record:
            steps[record["step"]] = record
    require(steps.get(2, {}).get("tokens") == loss_tokens,
            f"{name} gradients: ctune's step 2 trained on {steps.get(2, {}).get('tokens')} loss tokens, "
            f"the {GRAD_DOCS} documents hold {loss_tokens}")
    first = os.path.join(out_dir, "checkpoints", "step-000001")
    state1, state2 = train_state(first), train_state(os.path.join(out_dir, "checkpoints", "step-000002"))

    peft_model, missing, unexpected = hub.load_lora(first, base_dir)
    require(not missing and not unexpected, f"{name} gradients: peft's load of {first}: missing {missing[:4]}, "
                                            f"unexpected {unexpected[:4]}")
    params = {}
    for pname, param in peft_model.named_parameters():
        if "lora_" not in pname:
            continue
        ours = pname.removeprefix("base_model.model.").replace(".default", "")
        if "lora_magnitude_vector" in ours:
            ours = ours.removesuffix(".weight")
        param.requires_grad_(True)
        params[ours] = param
    require(set(params) == set(state1), f"{name} gradients: peft's trainable tensors differ from ctune's state: "
                                        f"only peft {sorted(set(params) - set(state1))[:3]}, "
                                        f"only ctune {sorted(set(state1) - set(params))[:3]}")
    for ours, param in params.items():  # the folder peft loaded is the state the gradient was taken at
        require(torch.equal(param.detach().double().flatten(), state1[ours]["param"]),
                f"{name} gradients: {first}: {ours} in the hub folder differs from the training state")
    peft_model.train()
    loss_sum = 0
    for doc, first_target in docs:
        logits = peft_model(torch.tensor([doc[:-1]])).logits[0].float()
        targets = torch.tensor(doc[1:])
        targets[:first_target - 1] = -100
        loss_sum = loss_sum + F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    loss = loss_sum / loss_tokens
    loss.backward()
    loss_diff = abs(loss.item() - steps[2]["loss"]) / abs(steps[2]["loss"])
    require(loss_diff <= LOSS_TOLERANCE, f"{name} gradients: peft's loss {loss.item():.8g} vs ctune's step-2 loss "
                                         f"{steps[2]['loss']:.8g} (relative {loss_diff:.3g}, tolerance {LOSS_TOLERANCE:g})")
    worst = {}
    for ours, param in sorted(params.items()):
        got = ((state2[ours]["exp_avg"] - BETA1 * state1[ours]["exp_avg"]) / (1 - BETA1)).float()
        want = param.grad.flatten().float()
        require(want.abs().max() > 0, f"{name} gradients: peft's gradient of {ours} is zero")
        diff = relative_diff(got, want)
        require(diff <= GRAD_TOLERANCE, f"{name} gradients: ctune's step-2 gradient of {ours} differs from peft's by "
                                        f"{diff:.3g} of its largest element (tolerance {GRAD_TOLERANCE:g})")
        kind = ours.rsplit(".", 2)[-2] if ours.endswith(".weight") else "lora_magnitude_vector"
        worst[kind] = max(worst.get(kind, 0.0), diff)
    return (f"grad loss {loss_diff:.1e}  " + "  ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items())) +
            f" over {len(params)} tensors")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ctune", required=True, help="the ctune binary")
    parser.add_argument("--source", required=True, help="the ctune source tree (for configs/tiny)")
    parser.add_argument("--work", required=True, help="an empty scratch folder")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    parser.add_argument("--seq", type=int, default=12, help="length of the compared token sequence")
    parser.add_argument("--only", help="comma-separated model names to check (default all)")
    parser.add_argument("--grad-model", default="qwen2",
                        help="the model whose DoRA gradients are compared with peft's (default qwen2; none: skip)")
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
