#!/usr/bin/env python3
"""safetensors interop between ctune (train/safetensors.h) and the `safetensors` library, both
directions, exact (driven by tests/interop_safetensors.sh).

Library -> ctune: files written here by safetensors.torch / safetensors.numpy (every dtype
the library writes, empty tensors, scalars, metadata, many tensors, up to 8 dims) are read by
`st_roundtrip dump`; its JSON (names, dtypes, shapes, bytes, values as text) must equal this
script's view of the same file through the library, field for field. Files the library
accepts but ctune refuses (F6 written by hand since the Python API cannot, 9 dimensions) and
an unknown dtype are checked for a clear error.

ctune -> library: `st_roundtrip write` writes the same tensors through st_write and the
streaming st_writer; the files must be identical, load with safe_open / load_file (torch and
numpy) with the right dtypes, shapes, metadata and bytes (regenerated here from the formulas
in tests/tools/st_roundtrip.c; F16/BF16 rounded by torch), and follow the reference layout.

    python scripts/interop_safetensors.py --tool BUILD/tools/st_roundtrip --dir TMPDIR
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import torch
import safetensors
import safetensors.numpy
import safetensors.torch
from safetensors import safe_open

BITS = {"BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32,
        "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F8_E5M2": 8,
        "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4,
        "F6_E2M3": 6, "F6_E3M2": 6}
TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
         "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
         "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool, "U16": torch.uint16,
         "U32": torch.uint32, "U64": torch.uint64, "C64": torch.complex64,
         "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn,
         "F8_E8M0": torch.float8_e8m0fnu, "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
         "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "F4": torch.float4_e2m1fn_x2}
NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
         "I8": "i1", "U8": "u1", "BOOL": "?", "U16": "<u2", "U32": "<u4", "U64": "<u8",
         "C64": "<c8"}
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)
    return cond


def fmt(v, digits):
    return "nan" if math.isnan(v) else "%.*g" % (digits, v)


def header_of(raw):
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8:8 + n].decode("utf-8"))


# ---- library -> ctune ----

def random_tensor(rng, dtype, shape):
    """Random bytes as the dtype: every bit pattern (NaN payloads, subnormals, Inf) occurs."""
    if dtype == "BOOL":
        return torch.from_numpy(rng.integers(0, 2, size=shape).astype(bool))
    n = int(np.prod(shape))
    if n == 0:
        return torch.empty(shape, dtype=TORCH[dtype])
    if dtype == "F4":  # torch's float4_e2m1fn_x2 packs two values per byte
        data = bytearray(rng.bytes(n))
        return torch.frombuffer(data, dtype=torch.uint8).view(TORCH[dtype]).reshape(shape)
    size = torch.empty((), dtype=TORCH[dtype]).element_size()
    data = bytearray(rng.bytes(n * size))
    return torch.frombuffer(data, dtype=TORCH[dtype]).reshape(shape).clone()


def library_files(out):
    rng = np.random.default_rng(20261122)
    files = []
    tensors = {}
    for i, dtype in enumerate(TORCH):
        tensors[f"all.{dtype}"] = random_tensor(rng, dtype, [4, 7])
        tensors[f"empty.{dtype}"] = random_tensor(rng, dtype, [3, 0] if i % 2 else [0])
    for dtype in ("F32", "BF16", "I64", "BOOL", "F8_E4M3", "U16"):
        tensors[f"scalar.{dtype}"] = random_tensor(rng, dtype, [])
    specials = [math.inf, -math.inf, math.nan, -0.0, 0.0, 1e-45, 1.17e-38, 3.4e38, 65504.0,
                65520.0, 6e-8, 6.1e-5, 1.0 / 3.0, -2.5, 1e-8, 9.2e18]
    for dtype in ("F64", "F32", "F16", "BF16"):
        tensors[f"specials.{dtype}"] = torch.tensor(specials, dtype=torch.float64).to(TORCH[dtype])
    tensors["big.BF16"] = torch.randn(128, 256, generator=torch.Generator().manual_seed(1)).bfloat16()
    tensors["dims8.I8"] = random_tensor(rng, "I8", [1, 2, 1, 3, 1, 2, 1, 2])
    tensors["名前.weight"] = random_tensor(rng, "F32", [2, 2])
    tensors['quote"back\\slash/tab\t.x'] = random_tensor(rng, "I16", [3])
    metadata = {"format": "pt", "description": 'ünïcödé "quoted" \\ back\nslash', "step": "12",
                "empty": "", "json": '{"a": [1, 2]}', "ünicode key": "🦀"}
    path = os.path.join(out, "torch_all.safetensors")
    safetensors.torch.save_file(tensors, path, metadata=metadata)
    files.append(path)

    arrays = {f"np.{d}": np.frombuffer(rng.bytes(6 * np.dtype(t).itemsize), dtype=t).reshape(2, 3)
              for d, t in NUMPY.items() if d != "BOOL"}
    arrays["np.BOOL"] = rng.integers(0, 2, size=(5,)).astype(bool)
    arrays["np.empty"] = np.zeros((2, 0, 3), dtype=np.float32)
    arrays["np.scalar"] = np.array(2.5, dtype=np.float64)
    path = os.path.join(out, "numpy_no_metadata.safetensors")
    safetensors.numpy.save_file(arrays, path)  # no metadata: no __metadata__ at all
    files.append(path)

    many = {}
    dtypes = list(TORCH)
    for i in range(400):
        d = dtypes[i % len(dtypes)]
        shape = [1 + i % 3] * (1 + i % 4)
        many[f"model.layers.{i}.w" if i % 7 else f"ω.{i}.ünï"] = random_tensor(rng, d, shape)
    path = os.path.join(out, "many.safetensors")
    safetensors.torch.save_file(many, path, metadata={"format": "pt", "n": "400"})
    files.append(path)
    return files


def handmade(path, entries, metadata=None):
    """A file the Python API cannot write (F6, 9 dims, unknown dtypes), laid out by hand."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, payload in entries:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    raw = struct.pack("<Q", len(text)) + text + data
    with open(path, "wb") as f:
        f.write(raw)
    return raw


def expected_dump(path):
    """This side's view of a file, in the shape st_roundtrip dump prints."""
    raw = open(path, "rb").read()
    _, header = header_of(raw)
    data = dict(safetensors.deserialize(raw))
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        loaded = {k: f.get_tensor(k) for k in f.keys() if data[k]["dtype"] in TORCH}
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = entry["dtype"], entry["shape"]
        check(data[name]["dtype"] == dtype and list(data[name]["shape"]) == shape,
              f"{path}: library view of {name}")
        numel = int(np.prod(shape)) if shape else 1
        item = {"name": name, "dtype": dtype, "shape": shape,
                "shape_text": "[" + ", ".join(map(str, shape)) + "]", "numel": numel,
                "nbytes": numel * BITS[dtype] // 8, "found": True,
                "hex": bytes(data[name]["data"]).hex(), "values": None}
        if dtype in ("F32", "F16", "BF16"):
            item["values"] = [fmt(v, 9) for v in loaded[name].float().flatten().tolist()]
        elif dtype == "F64":
            item["values"] = [fmt(v, 17) for v in loaded[name].flatten().tolist()]
        elif dtype in NUMPY and dtype != "C64":
            arr = np.frombuffer(bytes(data[name]["data"]), dtype=NUMPY[dtype])
            # the library's tensor must hold the same values as the bytes say
            check(loaded[name].flatten().tolist() == arr.tolist(), f"{path}: torch view of {name}")
            item["values"] = [str(int(v)) for v in arr.tolist()]
        tensors.append(item)
    return {"metadata": metadata, "tensors": tensors, "missing_found": False}


def run_tool(tool, *args):
    return subprocess.run([tool, *args], capture_output=True, text=True)


def compare_dump(tool, path):
    result = run_tool(tool, "dump", path)
    if not check(result.returncode == 0, f"st_roundtrip dump {path}: {result.stderr.strip()}"):
        return
    got = json.loads(result.stdout)
    want = expected_dump(path)
    check(got["metadata"] == want["metadata"], f"{path}: metadata {got['metadata']} != {want['metadata']}")
    check(got["missing_found"] is False, f"{path}: st_find found a missing name")
    names_got = [t["name"] for t in got["tensors"]]
    names_want = [t["name"] for t in want["tensors"]]
    check(names_got == names_want, f"{path}: tensor names/order differ")
    for g, w in zip(got["tensors"], want["tensors"]):
        err = g.pop("f32_error", None)
        if g["dtype"] not in ("F32", "F16", "BF16"):
            check(err and f"'{g['name']}'" in err and g["dtype"] in err,
                  f"{path}: st_read_f32 of {g['name']} ({g['dtype']}) error: {err}")
        for key in w:
            if g.get(key) != w[key]:
                check(False, f"{path}: tensor {w['name']!r} field {key}: ctune "
                      f"{str(g.get(key))[:200]} != library {str(w[key])[:200]}")
    print(f"ok: {os.path.basename(path)}: {len(names_got)} tensors, "
          f"{len(got['metadata'])} metadata keys, identical to the library's view")


def library_to_ctune(tool, out):
    for path in library_files(out):
        compare_dump(tool, path)
    rng = np.random.default_rng(7)
    path = os.path.join(out, "f6_handmade.safetensors")
    raw = handmade(path, [("f6a", "F6_E2M3", [4], rng.bytes(3)),
                          ("f6b", "F6_E3M2", [2, 8], rng.bytes(12)),
                          ("f4", "F4", [6], rng.bytes(3))], {"format": "pt"})
    check(len(safetensors.deserialize(raw)) == 3, "library accepts the F6 file")
    compare_dump(tool, path)
    # Accepted by the library, refused by ctune with a message naming tensor and limit.
    path = os.path.join(out, "dims9.safetensors")
    raw = handmade(path, [("deep", "U8", [1] * 9, b"\x05")])
    check(len(safetensors.deserialize(raw)) == 1, "library accepts 9 dimensions")
    result = run_tool(tool, "dump", path)
    check(result.returncode == 1 and "'deep'" in result.stderr and "9 dimensions" in result.stderr,
          f"9 dimensions refused clearly: {result.stderr.strip()}")
    # No dtype the library knows is unknown to ctune; an invented one is refused by both.
    path = os.path.join(out, "bad_dtype.safetensors")
    raw = handmade(path, [("good", "F32", [1], b"\0\0\x80\x3f"), ("odd", "F12_E9M2", [2], b"ab")])
    try:
        safetensors.deserialize(raw)
        check(False, "library refuses dtype F12_E9M2")
    except Exception:
        pass
    result = run_tool(tool, "dump", path)
    check(result.returncode == 1 and "'odd'" in result.stderr and "F12_E9M2" in result.stderr,
          f"unknown dtype refused clearly: {result.stderr.strip()}")
    print(f"ok: refusals: {result.stderr.strip()}")


# ---- ctune -> library ----

def f32_values(numel, k):
    specials = np.array([np.inf, -np.inf, np.nan, -0.0, 1e-8, 65520.0, 3.4e38, 6.0e-5, 1.0 / 3.0],
                        dtype=np.float32)
    j = np.arange(numel)
    v = ((j * 37 % 101) - 50).astype(np.float32) / np.float32(7.0) + np.float32(k)
    n = min(numel, len(specials))
    v[:n] = specials[:n]
    return v.astype(np.float32)


def expected_bytes(dtype, shape, k):
    numel = int(np.prod(shape)) if shape else 1
    if dtype == "F64":
        j = np.arange(numel)
        return ((j * 37 % 101) - 50).astype(np.float64) / 7.0 + k
    if dtype == "F32":
        return torch.from_numpy(f32_values(numel, k))
    if dtype in ("F16", "BF16"):
        # torch's rounding is the reference, element by element: c10's scalar conversion
        # (NaN -> 0x7FC0 for BF16), where the vectorized CPU path gives 0xFFFF for NaN.
        return torch.stack([torch.tensor(float(v)).to(TORCH[dtype])
                            for v in f32_values(numel, k)]) if numel else torch.empty(0, dtype=TORCH[dtype])
    nbytes = numel * BITS[dtype] // 8
    b = (np.arange(nbytes, dtype=np.uint64) * 131 + k * 17 + 7) % 256
    b = b.astype(np.uint8)
    return (b >> 3) & 1 if dtype == "BOOL" else b


def as_bytes(x):
    if isinstance(x, torch.Tensor):
        return x.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b""
    return np.ascontiguousarray(x).tobytes()


def ctune_to_library(tool, out):
    whole, stream = os.path.join(out, "ctune_whole.safetensors"), os.path.join(out, "ctune_stream.safetensors")
    result = run_tool(tool, "write", whole, stream)
    if not check(result.returncode == 0, f"st_roundtrip write: {result.stderr.strip()}"):
        return
    manifest = json.loads(result.stdout)
    raw = open(whole, "rb").read()
    check(raw == open(stream, "rb").read(), "st_write and st_writer give identical files")
    n, header = header_of(raw)
    check(n % 8 == 0 and raw[8:8 + n].rstrip(b" ").endswith(b"}"),
          "header length is a multiple of 8, padded with spaces")
    spans = sorted(tuple(e["data_offsets"]) for k, e in header.items() if k != "__metadata__")
    pos = 0
    for b, e in spans:
        check(b == pos, f"data offsets contiguous at {b}")
        pos = e
    check(8 + n + pos == len(raw), "no trailing bytes")
    want_meta = dict(manifest["metadata"], format="pt")
    by_name = {t["name"]: t for t in manifest["tensors"]}
    lib = dict(safetensors.deserialize(raw))
    check(set(lib) == set(by_name), "the library sees every tensor")
    with safe_open(whole, framework="pt") as f:
        check(f.metadata() == want_meta, f"metadata {f.metadata()} != {want_meta}")
        check(sorted(f.keys()) == sorted(by_name), "safe_open keys")
        torch_view = {k: f.get_tensor(k) for k in f.keys() if by_name[k]["dtype"] in TORCH}
    with safe_open(whole, framework="np") as f:
        numpy_view = {k: f.get_tensor(k) for k in f.keys() if by_name[k]["dtype"] in NUMPY}
    torch_only = {k: v for k, v in by_name.items() if v["dtype"] in TORCH}
    checked = 0
    for name, t in by_name.items():
        dtype, shape, k = t["dtype"], t["shape"], t["k"]
        want = expected_bytes(dtype, shape, k)
        check(lib[name]["dtype"] == dtype and list(lib[name]["shape"]) == shape,
              f"{name}: library dtype/shape {lib[name]['dtype']} {lib[name]['shape']}")
        check(bytes(lib[name]["data"]) == as_bytes(want), f"{name}: bytes differ from the formula")
        if name in torch_view:
            tv = torch_view[name]
            tshape = shape[:-1] + [shape[-1] // 2] if dtype == "F4" else shape
            check(tv.dtype == TORCH[dtype] and list(tv.shape) == tshape,
                  f"{name}: torch {tv.dtype} {list(tv.shape)}")
            check(as_bytes(tv) == as_bytes(want), f"{name}: torch values differ")
            if dtype in ("F16", "BF16"):  # value check beyond bytes: NaN-aware equality
                check(torch.equal(torch.nan_to_num(tv.float().flatten(), nan=7.0),
                                  torch.nan_to_num(want.float().flatten(), nan=7.0)),
                      f"{name}: values")
        if name in numpy_view:
            nv = numpy_view[name]
            check(nv.dtype == np.dtype(NUMPY[dtype]) and list(nv.shape) == shape,
                  f"{name}: numpy {nv.dtype} {nv.shape}")
            check(nv.tobytes() == as_bytes(want), f"{name}: numpy values differ")
        checked += 1
    # (safetensors.torch.load_file refuses the whole file because F6 has no torch dtype;
    # safe_open above loaded every other tensor one by one, as load_file does.)
    check(set(torch_view) == set(torch_only), "every tensor with a torch dtype loads in torch")
    # Layout: the reference writer's tensor order for the same tensors (F6 has no torch dtype).
    ref = safetensors.torch.save({k: v.clone() for k, v in torch_view.items()}, metadata={"format": "pt"})
    _, ref_header = header_of(ref)
    ref_order = [k for k in ref_header if k != "__metadata__"]
    ours = [k for k in header if k != "__metadata__" and k in torch_view]
    check(ours == ref_order, "tensor order matches the reference writer")
    print(f"ok: ctune-written file: {checked} tensors ({len(torch_view)} via torch, "
          f"{len(numpy_view)} via numpy, all via safetensors.deserialize), {len(want_meta)} "
          f"metadata keys, layout as the reference")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True)
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    print(f"safetensors {safetensors.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    library_to_ctune(args.tool, args.dir)
    ctune_to_library(args.tool, args.dir)
    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("all interop checks passed")


if __name__ == "__main__":
    main()
