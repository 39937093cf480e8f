#!/usr/bin/env python3
"""Writes the safetensors reference fixtures used by tests/test_safetensors.c.

Every .safetensors file here is written by the Python `safetensors` library (the reference
implementation); the expected values beside them are computed by torch, never by ctune, so the
C reader, writer and dtype conversions are checked against an independent source.

Run with the project venv:  /opt/ctune-venv/bin/python scripts/gen_safetensors_fixtures.py
Output: tests/fixtures/safetensors/ (a few KB, committed; CI has no torch).
"""
import json
import os
import struct
import sys

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "safetensors")


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def f32_bits(t: torch.Tensor) -> list:
    return [int(x) & 0xFFFFFFFF for x in t.float().contiguous().reshape(-1).view(torch.int32).tolist()]


def u16_bits(t: torch.Tensor) -> list:
    return [int(x) & 0xFFFF for x in t.contiguous().reshape(-1).view(torch.int16).tolist()]


def from_f32_bits(bits: list) -> torch.Tensor:
    return torch.tensor([b - (1 << 32) if b >= (1 << 31) else b for b in bits],
                        dtype=torch.int32).view(torch.float32)


def from_u16_bits(bits: list, dtype) -> torch.Tensor:
    return torch.tensor([b - (1 << 16) if b >= (1 << 15) else b for b in bits],
                        dtype=torch.int16).view(dtype)


def safetensors_dtype_name(t: torch.Tensor) -> str:
    names = {
        torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
        torch.uint16: "U16", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
        torch.uint32: "U32", torch.float32: "F32", torch.int64: "I64", torch.uint64: "U64",
        torch.float64: "F64", torch.complex64: "C64", torch.float8_e5m2: "F8_E5M2",
        torch.float8_e4m3fn: "F8_E4M3", torch.float8_e8m0fnu: "F8_E8M0",
        torch.float8_e4m3fnuz: "F8_E4M3FNUZ", torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
        torch.float4_e2m1fn_x2: "F4",
    }
    return names[t.dtype]


def expectation(tensors: dict) -> dict:
    out = {}
    for name, t in tensors.items():
        shape = list(t.shape)
        if t.dtype == torch.float4_e2m1fn_x2:
            shape[-1] *= 2  # safetensors records the logical count: two F4 values per byte
        entry = {"dtype": safetensors_dtype_name(t), "shape": shape, "hex": raw_bytes(t).hex()}
        if t.dtype in (torch.float32, torch.float16, torch.bfloat16):
            entry["f32_bits"] = f32_bits(t)
        out[name] = entry
    return out


def write_json(path: str, value, indent=1) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=indent, sort_keys=True)
        f.write("\n")


def all_dtypes() -> dict:
    g = torch.Generator().manual_seed(7)
    floats = torch.randn(6, generator=g) * 3
    t = {
        "bool": torch.tensor([True, False, True]),
        "u8": torch.tensor([0, 1, 254, 255], dtype=torch.uint8),
        "i8": torch.tensor([-128, -1, 0, 127], dtype=torch.int8),
        "i16": torch.tensor([-32768, -2, 7, 32767], dtype=torch.int16),
        "u16": torch.tensor([0, 1, 40000, 65535], dtype=torch.int32).to(torch.uint16),
        "f16": torch.tensor([[1.0, -2.5, 65504.0], [6e-8, float("inf"), -0.0]]).half(),
        "bf16": torch.tensor([[1.0, -2.5], [3.0e38, 1e-40]]).bfloat16(),
        "i32": torch.tensor([-(2**31), -1, 5, 2**31 - 1], dtype=torch.int32),
        "u32": torch.tensor([0, 2**32 - 1], dtype=torch.int64).to(torch.uint32),
        "f32": floats.reshape(2, 3),
        "i64": torch.tensor([-(2**63), -1, 2**63 - 1], dtype=torch.int64),
        "u64": torch.tensor([0, 2**62 + 3], dtype=torch.int64).to(torch.uint64),
        "f64": torch.tensor([3.141592653589793, -1e300], dtype=torch.float64),
        "c64": torch.tensor([1 + 2j, -0.5 - 0.25j], dtype=torch.complex64),
        "f8_e5m2": torch.tensor([1.0, -3.0, 0.5]).to(torch.float8_e5m2),
        "f8_e4m3": torch.tensor([1.0, -3.0, 0.5]).to(torch.float8_e4m3fn),
        "f8_e8m0": torch.tensor([1.0, 4.0, 0.25]).to(torch.float8_e8m0fnu),
        "f8_e4m3fnuz": torch.tensor([1.0, -3.0]).to(torch.float8_e4m3fnuz),
        "f8_e5m2fnuz": torch.tensor([1.0, -3.0]).to(torch.float8_e5m2fnuz),
        "f4": torch.tensor([[0x21, 0x43], [0xF0, 0x0F]], dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
        "scalar": torch.tensor(2.75),
        "empty": torch.zeros(0, dtype=torch.float32),
        "empty_2d": torch.zeros(3, 0, dtype=torch.bfloat16),
        # serde_json escapes '"', '\\' and control characters; non-ASCII stays raw UTF-8.
        'odd "name"\t\u00fc/\\': torch.tensor([9], dtype=torch.int16),
    }
    return t


def rounding_cases() -> dict:
    special = [
        1.0, -1.0, 0.0, -0.0, float("inf"), float("-inf"), float("nan"), -float("nan"),
        65504.0, 65519.99, 65520.0, 65536.0, 1e10, -1e10, 3.4028234663852886e38,
        2.0**-14, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 5 * 2.0**-25, 2.0**-25 * 1.0000001,
        2.0**-26, 2.0**-14 - 2.0**-24, 2.0**-14 - 2.0**-25, 1e-40, -1e-40, 1.17549435e-38,
        1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-11 + 2.0**-20,
        1 + 2.0**-8 + 2.0**-20, 255.5, 256.5, 0.1, 1 / 3, -2.0**-15, 6.1e-5,
    ]
    bits = f32_bits(torch.tensor(special, dtype=torch.float32))
    # NaNs with payloads: a quiet and a signalling pattern, both signs.
    bits += [0x7FC00001, 0x7F800001, 0xFFC12345, 0x7FFFFFFF]
    # bf16 ties and near-ties: every low-16-bit pattern class around 0x8000, odd and even.
    for hi in (0x3F80, 0x3F81, 0xC2F7, 0x7F7F):
        for lo in (0x0000, 0x7FFF, 0x8000, 0x8001, 0xFFFF):
            bits.append((hi << 16) | lo)
    g = torch.Generator().manual_seed(11)
    rnd = torch.randn(120, generator=g) * torch.pow(2.0, torch.randint(-30, 20, (120,), generator=g).float())
    bits += f32_bits(rnd)
    x = from_f32_bits(bits)
    cases = {
        "f32_bits": bits,
        "bf16_bits": u16_bits(x.to(torch.bfloat16)),
        "f16_bits": u16_bits(x.to(torch.float16)),
    }
    # Decoding: a spread of 16-bit patterns (subnormals, normals, Inf, NaN, both signs).
    patterns = sorted(set([0x0000, 0x0001, 0x0002, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0x7C00, 0x7C01,
                           0x7E00, 0x7FFF, 0x8000, 0x8001, 0x83FF, 0xFC00, 0xFE00, 0x0080, 0x007F,
                           0x7F80, 0x7F7F, 0xFF80, 0x3F80, 0x7FC0]
                          + list(range(0, 65536, 1021))))
    cases["u16_patterns"] = patterns
    cases["f16_to_f32_bits"] = f32_bits(from_u16_bits(patterns, torch.float16))
    cases["bf16_to_f32_bits"] = f32_bits(from_u16_bits(patterns, torch.bfloat16))
    return cases


def sharded(out_dir: str) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards

    os.makedirs(out_dir, exist_ok=True)
    state = {
        "model.embed_tokens.weight": torch.arange(12, dtype=torch.float32).reshape(4, 3) / 4,
        "model.layers.0.mlp.up_proj.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) - 2,
        "model.norm.weight": torch.ones(3, dtype=torch.bfloat16) * 1.5,
        "lm_head.weight": torch.arange(12, dtype=torch.float32).reshape(4, 3) * -1,
    }
    split = split_torch_state_dict_into_shards(state, max_shard_size=60)
    assert split.is_sharded and len(split.filename_to_tensors) >= 2
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, os.path.join(out_dir, filename),
                  metadata={"format": "pt"})
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    write_json(os.path.join(out_dir, "expected.json"),
               {"weight_map": split.tensor_to_filename, "tensors": expectation(state)})


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    tensors = all_dtypes()
    # metadata={"format": "pt"} only: with one key the reference header is deterministic
    # (it keeps metadata in a hash map), so ctune's writer must reproduce the file byte for byte.
    save_file(tensors, os.path.join(OUT, "all_dtypes.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(OUT, "all_dtypes.expected.json"),
               {"metadata": {"format": "pt"}, "tensors": expectation(tensors)})

    meta = {"format": "pt", "producer": "gen_safetensors_fixtures.py", "note": "caf\u00e9 \"q\""}
    small = {"weight": torch.tensor([[0.5, -1.0]], dtype=torch.float32),
             "nothing": torch.zeros(0, 4, dtype=torch.float16)}
    save_file(small, os.path.join(OUT, "metadata.safetensors"), metadata=meta)
    write_json(os.path.join(OUT, "metadata.expected.json"),
               {"metadata": meta, "tensors": expectation(small)})

    write_json(os.path.join(OUT, "rounding.json"), rounding_cases(), indent=None)
    sharded(os.path.join(OUT, "sharded"))

    total = 0
    for dirpath, _, files in os.walk(OUT):
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
    for dirpath, _, files in os.walk(OUT):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"wrote {OUT} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
