#!/usr/bin/env python3
"""Writes tests/fixtures/half/conversions.txt: torch's fp32 -> bfloat16 / float16 rounding
(x.to(torch.bfloat16), x.to(torch.float16)) and the widening back to fp32, the reference for
the to_half / from_half kernels.  Run with /opt/ctune-venv/bin/python; the output depends only
on the fixed input list and seed (re-running must reproduce the committed file).

Format: one value per line, five hex bit patterns:
    f32 bf16 fp16 f32(bf16) f32(fp16)
where f32(h) is h.to(torch.float32) (exact widening). Lines starting with '#' are comments.
Inputs: edge cases (signed zeros, fp32 subnormals, ties to even in both directions and their
neighbours for both formats, largest finite values and the rounding to inf, the fp16
subnormal range, infinities, NaNs, carries into the exponent) and random values over wide
exponent ranges.
"""
import os
import struct

import torch


def f32_bits(value):
    return struct.unpack("<I", struct.pack("<f", value))[0]


def edge_cases():
    cases = [
        # zeros, one, pi
        0x00000000, 0x80000000, 0x3F800000, 0xBF800000, f32_bits(3.14159265358979), 0xC0490FDB,
        # fp32 subnormals: smallest, largest (bf16 rounds it up to the smallest normal), smallest normal
        0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x00008000, 0x00018000, 0x00800000,
        # bf16 ties between 1.0 and its neighbours: to even down (0x3F80) and up (0x3F82)
        0x3F808000, 0x3F807FFF, 0x3F808001, 0x3F818000, 0x3F817FFF, 0x3F818001, 0xBF808000, 0xBF818000,
        # bf16 carry into the exponent: 1.99.. -> 2.0
        0x3FFF8000, 0x3FFF7FFF, 0xBFFFC000,
        # bf16 largest finite, halfway to inf (rounds to inf), just below, fp32 max
        0x7F7F0000, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0xFF7F8000, 0xFF7F7FFF,
        # fp16 ties around 1.0: 1 + 2^-11 (to 1.0), 1 + 3*2^-11 (to 1 + 2^-9), and neighbours
        0x3F801000, 0x3F800FFF, 0x3F801001, 0x3F803000, 0x3F802FFF, 0x3F803001, 0xBF801000, 0xBF803000,
        # fp16 carry into the exponent: 2 - 2^-12 -> 2.0
        0x3FFFF000, 0x3FFFEFFF, 0xBFFFF000,
        # fp16 largest finite 65504, 65519.99 (stays), 65520 (halfway, to inf), 65536, 1e5
        0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x47800000, 0x47C35000, 0xC77FF000, 0xC77FEFFF,
        # fp16 subnormals: smallest 2^-24, 2^-25 (tie to 0), just above/below it, 2^-26,
        # ties 1.5 and 2.5 * 2^-24, largest subnormal, halfway to the smallest normal, 2^-14
        0x33800000, 0xB3800000, 0x33000000, 0x33000001, 0x32FFFFFF, 0xB3000001, 0x32800000,
        0x33C00000, 0x34200000, 0x33BFFFFF, 0x33C00001, 0x387FC000, 0x387FE000, 0x387FDFFF,
        0x387FFFFF, 0x38800000, 0xB8800000, 0x38000000, 0x35ABCDEF, 0xB6FEDCBA,
        # infinities and NaNs with both signs, quiet and signalling, with payloads
        0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF,
        0x7FA12345,
    ]
    return cases


def random_cases(count_per_kind=100):
    gen = torch.Generator().manual_seed(20261122)

    def randint(high, n):
        return torch.randint(0, high, (n,), generator=gen, dtype=torch.int64).tolist()

    cases = []
    # any finite fp32 exponent (bf16 covers them all; fp16 mostly saturates or flushes)
    signs, exps, mants = randint(2, count_per_kind), randint(255, count_per_kind), randint(1 << 23, count_per_kind)
    cases += [(s << 31) | (e << 23) | m for s, e, m in zip(signs, exps, mants)]
    # around fp16's range: 2^-27 .. 2^16
    signs, exps, mants = randint(2, count_per_kind), randint(44, count_per_kind), randint(1 << 23, count_per_kind)
    cases += [(s << 31) | ((e + 127 - 27) << 23) | m for s, e, m in zip(signs, exps, mants)]
    # exact ties: low 16 bits 0x8000 (bf16) or low 13 bits 0x1000 (fp16) with random upper bits
    signs, exps, mants = randint(2, count_per_kind), randint(44, count_per_kind), randint(1 << 23, count_per_kind)
    for i, (s, e, m) in enumerate(zip(signs, exps, mants)):
        m = (m & ~0xFFFF) | 0x8000 if i % 2 == 0 else (m & ~0x1FFF) | 0x1000
        cases.append((s << 31) | ((e + 127 - 27) << 23) | m)
    return cases


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = os.path.join(root, "tests", "fixtures", "half")
    os.makedirs(out_dir, exist_ok=True)
    bits = edge_cases() + random_cases()
    x = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)

    def to16(t, dtype):
        return t.to(dtype).view(torch.int16).to(torch.int64) & 0xFFFF

    def widen(h, dtype):
        # unsigned 16-bit pattern -> the int16 with the same bits
        h16 = (h - ((h >> 15) << 16)).to(torch.int16)
        return h16.view(dtype).to(torch.float32).view(torch.int32).to(torch.int64) & 0xFFFFFFFF

    bf16, fp16 = to16(x, torch.bfloat16), to16(x, torch.float16)
    # Converting the whole tensor and one element at a time (a vector loop's body versus its
    # tail) must agree, or the fixture would pin one code path's quirk. NaN payloads are left
    # out of the comparison: the kernel contract only promises a NaN.
    for i, b in enumerate(bits):
        xi = x[i : i + 1].clone()
        if not torch.isnan(xi).item():
            assert to16(xi, torch.bfloat16).item() == bf16[i].item(), hex(b)
            assert to16(xi, torch.float16).item() == fp16[i].item(), hex(b)
    bf16_wide, fp16_wide = widen(bf16, torch.bfloat16), widen(fp16, torch.float16)
    lines = [
        f"# generated by scripts/gen_half_fixtures.py with torch {torch.__version__}",
        "# f32 bf16 fp16 f32(bf16) f32(fp16)",
    ]
    for i, b in enumerate(bits):
        lines.append(f"{b:08x} {bf16[i].item():04x} {fp16[i].item():04x} "
                     f"{bf16_wide[i].item():08x} {fp16_wide[i].item():08x}")
    with open(os.path.join(out_dir, "conversions.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
