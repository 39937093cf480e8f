#!/usr/bin/env python3
"""Reference fixtures for tests/test_model.c, computed with transformers (and peft) in fp32.

For each small random config a Hugging Face model folder is saved with save_pretrained
(config.json + model.safetensors) under tests/fixtures/model/<name>/, and beside it
reference.safetensors holding:
  input_ids [2, S] I32, targets [2, S] I32 (-100 = no loss), logits [2, S, V] F32,
  loss [1] F32 (sum of token cross-entropies over valid targets),
  grad.<parameter name> F32: d loss / d parameter for every parameter (full fine-tuning).
For llama_gqa also lora/ (peft adapter folder, B non-zero) with lora/reference.safetensors
holding the same inputs and grad.<our adapter name> for every adapter tensor, and dora/ the
same for a DoRA adapter (use_dora; magnitudes away from the rows' norms), whose
reference_dropout.safetensors is a training step under adapter dropout 0.25 with ctune's
counter-based masks (kernels.h: dropout) put into peft's lora_dropout modules, seed 7.

Weights are drawn larger than transformers' init (std 0.02) so every path carries signal,
norm weights around 1, biases non-zero. qwen2 is saved in bfloat16 and qwen3 in float16 so
the C loader's conversions are exercised; their references use the rounded weights.

Run: /opt/ctune-venv/bin/python scripts/gen_model_fixtures.py
"""
import copy
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

from gen_dropout_fixture import splitmix64  # the mask's reference, beside this script
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "model")
BATCH, SEQ = 2, 12


def configs():
    common = dict(num_hidden_layers=2, max_position_embeddings=128, attn_implementation="eager")
    return [
        ("llama_gqa", LlamaForCausalLM, LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64},
            bos_token_id=1, eos_token_id=2, **common), torch.float32),
        ("llama_tied", LlamaForCausalLM, LlamaConfig(
            vocab_size=48, hidden_size=32, intermediate_size=40, num_attention_heads=4,
            num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
            bos_token_id=1, eos_token_id=[2, 3], **common), torch.float32),
        ("qwen2", Qwen2ForCausalLM, Qwen2Config(
            vocab_size=56, hidden_size=48, intermediate_size=40, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **common), torch.bfloat16),
        ("qwen3", Qwen3ForCausalLM, Qwen3Config(
            vocab_size=40, hidden_size=32, intermediate_size=40, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common), torch.float16),
    ]


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)


def make_inputs(vocab, gen):
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    targets = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    targets[0, :3] = -100  # a masked prompt
    targets[1, 5] = -100
    targets[1, -1] = -100
    return ids, targets


def loss_and_logits(model, ids, targets):
    logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return loss, logits


def our_name(peft_name):
    name = peft_name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".default", "")
    # peft saves the DoRA magnitude without its module's ".weight" (save_and_load.py)
    return name.removesuffix(".lora_magnitude_vector.weight") + ".lora_magnitude_vector" \
        if name.endswith(".lora_magnitude_vector.weight") else name


def order_metadata(model):
    """named_parameters order (shared tied weights listed once), in ctune's names."""
    return {"format": "pt", "param_order": ",".join(our_name(n) for n, _ in model.named_parameters())}


def reference_tensors(ids, targets, logits, loss):
    return {"input_ids": ids.to(torch.int32).contiguous(), "targets": targets.to(torch.int32).contiguous(),
            "logits": logits.detach().float().contiguous(), "loss": loss.detach().float().reshape(1)}


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(ROOT)
    for name, cls, cfg, save_dtype in configs():
        out = os.path.join(ROOT, name)
        model = cls(cfg).float().eval()
        randomize(model, gen)
        # Round the weights to the dtype they are saved in, so the C side (which reads them
        # back and computes in fp32) sees exactly the weights of the reference.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(save_dtype).float())
        # Save a converted copy: converting the model itself would also round its fp32 RoPE
        # buffers (inv_freq) to the save dtype and spoil the reference.
        copy.deepcopy(model).to(save_dtype).save_pretrained(out, safe_serialization=True)
        os.remove(os.path.join(out, "generation_config.json"))  # not read by the tests

        ids, targets = make_inputs(cfg.vocab_size, gen)
        loss, logits = loss_and_logits(model, ids, targets)
        model.zero_grad()
        loss.backward()
        ref = reference_tensors(ids, targets, logits, loss)
        seen = set()
        for pname, p in model.named_parameters():  # tied: one shared parameter, listed once
            if id(p) in seen:
                continue
            seen.add(id(p))
            ref["grad." + pname] = p.grad.detach().float().contiguous()
        save_file(ref, os.path.join(out, "reference.safetensors"), metadata=order_metadata(model))
        print(f"{name}: loss {loss.item():.6f}, {len(ref) - 4} gradients")

        if name == "llama_gqa":
            make_lora_fixture(copy.deepcopy(model), out, ids, targets, gen)
            make_dora_fixture(model, out, ids, targets, torch.Generator().manual_seed(4321))  # leaves gen as it was

    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ROOT) for f in fs)
    print(f"fixtures: {total} bytes")


def adapter_step(peft_model, ids, targets):
    """One step's loss and reference tensors: the inputs, logits, loss and every trainable gradient."""
    loss, logits = loss_and_logits(peft_model, ids, targets)
    peft_model.zero_grad()
    loss.backward()
    ref = reference_tensors(ids, targets, logits, loss)
    for pname, p in peft_model.named_parameters():
        if p.requires_grad:
            ref["grad." + our_name(pname)] = p.grad.detach().float().contiguous()
    return loss, ref


def make_lora_fixture(model, out, ids, targets, gen):
    from peft import LoraConfig, get_peft_model

    lora_cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"])
    peft_model = get_peft_model(model, lora_cfg)
    with torch.no_grad():  # B non-zero so that gradients reach A and the inputs
        for pname, p in peft_model.named_parameters():
            if "lora_" in pname:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    lora_dir = os.path.join(out, "lora")
    peft_model.save_pretrained(lora_dir)
    os.remove(os.path.join(lora_dir, "README.md"))  # peft's card template, not read by the tests
    loss, ref = adapter_step(peft_model, ids, targets)
    save_file(ref, os.path.join(lora_dir, "reference.safetensors"), metadata=order_metadata(peft_model))
    with open(os.path.join(lora_dir, "adapter_config.json")) as f:
        assert json.load(f)["r"] == 4
    print(f"llama_gqa/lora: loss {loss.item():.6f}, {len(ref) - 4} adapter gradients")


class CounterDropout(torch.nn.Module):
    """ctune's inverted dropout (kernels.h: dropout) over the flat [tokens, in] input."""

    def __init__(self, p, seed, offset):
        super().__init__()
        self.p, self.seed, self.offset = p, seed, offset

    def forward(self, x):
        n = x.numel()
        keep = torch.tensor([(splitmix64(self.seed ^ splitmix64(self.offset + i)) >> 40) * 2.0**-24 >= self.p
                             for i in range(n)]).reshape(x.shape)
        return torch.where(keep, x / (1 - self.p), torch.zeros_like(x))


KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_dora_fixture(model, out, ids, targets, gen):
    from peft import LoraConfig, get_peft_model

    dora_cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.25, bias="none", task_type="CAUSAL_LM", use_dora=True,
                          target_modules=KINDS)
    peft_model = get_peft_model(model, dora_cfg)
    with torch.no_grad():  # B non-zero; each magnitude 0.5x..1.5x its row's norm
        for pname, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in pname:
                p.mul_(0.5 + torch.rand(p.shape, generator=gen))
            elif "lora_" in pname:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    dora_dir = os.path.join(out, "dora")
    peft_model.save_pretrained(dora_dir)
    os.remove(os.path.join(dora_dir, "README.md"))
    for dropout in (False, True):
        peft_model.train(dropout)  # peft's DoRA takes its dropout form only while training
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_dropout") and "default" in module.lora_dropout:
                layer = int(name.split(".layers.")[1].split(".")[0])
                offset = (layer * 8 + KINDS.index(name.rsplit(".", 1)[1])) << 40  # model_dropout_offset
                module.lora_dropout["default"] = CounterDropout(0.25, 7, offset) if dropout else torch.nn.Identity()
        loss, ref = adapter_step(peft_model, ids, targets)
        file = "reference_dropout.safetensors" if dropout else "reference.safetensors"
        save_file(ref, os.path.join(dora_dir, file), metadata=order_metadata(peft_model))
        print(f"llama_gqa/dora{'+dropout' if dropout else ''}: loss {loss.item():.6f}, {len(ref) - 4} adapter gradients")
    with open(os.path.join(dora_dir, "adapter_config.json")) as f:
        assert json.load(f)["use_dora"] is True


if __name__ == "__main__":
    sys.exit(main())
