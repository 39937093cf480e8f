"""ctune's NF4 quantizer against bitsandbytes' (tests/interop_nf4.sh).

  interop_nf4.py write IN.safetensors      tensors that exercise the format's corners
  interop_nf4.py check IN.safetensors OUT.safetensors
      OUT is `nf4_tool codes IN OUT`: for every tensor, the packed codes and absmax must be
      bitsandbytes' quantize_4bit(blocksize=64, quant_type="nf4") bit for bit, the read-back
      values its reference dequantization in fp32 bit for bit, and their bf16 / fp16 roundings
      (what ctune's GEMMs read) torch's .to() of those values.
The reference dequantization is bitsandbytes' "default" backend (_dequantize_4bit_compute, the
flattened blocks its CUDA kernel also reads). Its CPU build's C++ kernel, which
dequantize_4bit picks on CPU for even row lengths, cuts blocks per row instead: it agrees only
where a row holds whole blocks (every Llama Linear), and reads the wrong absmax otherwise
(normal_2048x96 below, measured with bitsandbytes 0.50.2).
Prints one line per check; exits 1 on any mismatch."""
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import bitsandbytes.functional as bnbf
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from bitsandbytes.backends.utils import _get_4bit_code

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def corner_tensors():
    g = torch.Generator().manual_seed(7)
    t = {}
    t["normal_64x64"] = torch.randn(64, 64, generator=g) * 0.02
    t["normal_2048x96"] = torch.randn(2048, 96, generator=g)
    t["partial_last_block_3x100"] = torch.randn(3, 100, generator=g)  # 300 = 4 x 64 + 44
    t["odd_count_1x7"] = torch.randn(1, 7, generator=g)
    t["one_value"] = torch.tensor([[-3.5]])
    zeros = torch.randn(4, 64, generator=g)
    zeros[1] = 0.0  # a block of zeros: absmax 0, every code the zero code
    t["zero_block_4x64"] = zeros
    mixed = torch.randn(2, 64, generator=g) * 1e-3
    mixed[0, 5] = 1e4  # one huge value squeezes the rest of its block onto few codes
    mixed[1, :] = torch.randn(64, generator=g) * 1e-40  # subnormal absmax
    t["extremes_2x64"] = mixed
    # Values on and next to the decision points: a block whose absmax is 1 holds each fp32
    # midpoint and its two fp32 neighbours (the tie goes to the lower code).
    mids = (torch.tensor(NF4[:-1]) + torch.tensor(NF4[1:])) / 2
    row = torch.cat([mids, torch.nextafter(mids, torch.tensor(2.0)), torch.nextafter(mids, torch.tensor(-2.0)),
                     torch.tensor([1.0, -1.0, 0.0, -0.0])])  # 49 values
    ties = torch.zeros(64)
    ties[: row.numel()] = row
    ties[row.numel():] = 0.5
    t["midpoints_1x64"] = ties.reshape(1, 64)
    # Scaled ties: absmax 3, so each value goes through the reciprocal multiply first.
    t["midpoints_scaled_1x64"] = (ties * 3).reshape(1, 64)
    t["bf16_input_32x64"] = (torch.randn(32, 64, generator=g) * 0.05).to(torch.bfloat16)
    return {k: v.contiguous() for k, v in t.items()}


def check(inp, out):
    tensors = load_file(inp)
    got = load_file(out)
    failures = 0
    for name, x in tensors.items():
        x32 = x.float()
        packed, state = bnbf.quantize_4bit(x32, blocksize=64, quant_type="nf4")
        codes = packed.reshape(-1).numpy()
        absmax = state.absmax.float().numpy()
        ours_codes = got[name + ".codes"].numpy()
        ours_absmax = got[name + ".absmax"].numpy()
        ours_values = got[name + ".values"]
        problems = []
        if ours_codes.shape != codes.shape or not np.array_equal(ours_codes, codes):
            diff = np.nonzero(ours_codes != codes)[0] if ours_codes.shape == codes.shape else []
            problems.append(f"codes differ (bytes {list(diff[:5])})")
        if ours_absmax.shape != absmax.shape or not np.array_equal(ours_absmax.view(np.uint32), absmax.view(np.uint32)):
            problems.append("absmax differs")
        ref32 = _dequantize_4bit_compute(packed.reshape(-1), state.absmax, _get_4bit_code("nf4", packed.device), 64,
                                         state.shape, torch.float32).reshape(-1)
        if not torch.equal(ours_values.view(torch.int32), ref32.contiguous().view(torch.int32)):
            problems.append("fp32 read-back differs from bitsandbytes' reference dequantization")
        for dtype in (torch.bfloat16, torch.float16):
            # what ctune's GEMMs read: the fp32 read-back rounded as torch's .to()
            if not torch.equal(ours_values.to(dtype).view(torch.int16), ref32.to(dtype).view(torch.int16)):
                problems.append(f"{dtype} rounding differs")
        n = x.numel()
        if problems:
            failures += 1
            print(f"FAIL {name} ({n} values): " + "; ".join(problems))
        else:
            print(f"ok   {name} ({n} values, {absmax.size} blocks): codes, absmax and read-back equal bitsandbytes'")
    return failures


def main():
    if sys.argv[1] == "write":
        save_file(corner_tensors(), sys.argv[2])
        return 0
    return 1 if check(sys.argv[2], sys.argv[3]) else 0


if __name__ == "__main__":
    sys.exit(main())
