#!/usr/bin/env python3
"""Static instruction counts of a CUDA source's kernels, without a GPU.

Compiles one .cu file for one architecture (default sm_90a), prints each kernel's registers
and spills (ptxas -v), and for every loop of its machine code (SASS) that holds tensor-core
products (HMMA or HGMMA) the instructions of one pass through it by kind: how many
instructions a warp issues per product, the number that says whether a kernel can keep its
tensor cores busy (an H100 SM sub-partition issues one instruction per cycle and finishes
an HMMA.16816 every ~6-8 cycles, so beyond ~6 other instructions per HMMA the warps' own
issue is the limit). A loop's count covers every path through its body, both sides of a
branch included; --replace OLD=>NEW (text replaced in a copy of the source, e.g. to fix a
branch condition to true) counts one path.

cuobjdump and nvdisasm are not part of the CUDA toolkit image here: they come from PyPI's
nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm wheels, downloaded once into build-tools/
(ignored by git).

    scripts/sass_mix.py kernels/cuda/attention_mma.cu [--kernel am_fwd] [--arch sm_90a]
        [--replace "const bool full = =>const bool full = true || "]
"""
import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "build-tools")


def tool_dir():
    """The folder holding cuobjdump and nvdisasm (which cuobjdump runs)."""
    found = shutil.which("cuobjdump")
    if found and shutil.which("nvdisasm"):
        return os.path.dirname(found)
    bin_dir = os.path.join(TOOLS, "nvidia", "cu13", "bin")
    for tool in ("cuobjdump", "nvdisasm"):
        exe = os.path.join(bin_dir, tool)
        if os.path.exists(exe):
            continue
        os.makedirs(TOOLS, exist_ok=True)
        python = os.environ.get("PYTHON", sys.executable)
        subprocess.run([python, "-m", "pip", "download", "-q", "--no-deps", "-d", TOOLS,
                        f"nvidia-cuda-{tool}"], check=True)
        wheels = glob.glob(os.path.join(TOOLS, f"nvidia_cuda_{tool}-*.whl"))
        if not wheels:
            sys.exit(f"sass_mix: pip download gave no nvidia_cuda_{tool} wheel")
        with zipfile.ZipFile(wheels[0]) as whl:
            whl.extractall(TOOLS)
        os.chmod(exe, 0o755)
    return bin_dir


def parse_functions(sass):
    """{mangled name: [(address, instruction text)]} from cuobjdump -sass output."""
    functions, current = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2)))
    return functions


def opcode(text):
    text = re.sub(r"^@!?U?P\w+\s+", "", text)
    return text.split()[0].split(".")[0]


def product_loops(code, every=False):
    """(start, end, opcodes) of each backward branch's body that holds a tensor-core product
    (every loop with every=True)."""
    index = {addr: i for i, (addr, _) in enumerate(code)}
    loops = []
    for i, (addr, text) in enumerate(code):
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target < addr and target in index:
            body = [opcode(t) for _, t in code[index[target]:i + 1]]
            if every or any(o in ("HMMA", "HGMMA") for o in body):
                loops.append((target, addr, body))
    return loops


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--kernel", default="", help="substring of the (mangled) kernel names to show")
    ap.add_argument("--replace", action="append", default=[], metavar="OLD=>NEW")
    ap.add_argument("--top", type=int, default=14, help="instruction kinds listed per loop")
    ap.add_argument("--all-loops", action="store_true",
                    help="every loop, with its instructions per global load or store (memory-bound kernels)")
    args = ap.parse_args()

    text = open(args.source).read()
    for rule in args.replace:
        old, sep, new = rule.partition("=>")
        if not sep or old not in text:
            sys.exit(f"sass_mix: --replace {rule!r}: {old!r} is not in {args.source}")
        text = text.replace(old, new)
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, os.path.basename(args.source))
        open(src, "w").write(text)
        obj = os.path.join(tmp, "k.o")
        arch = args.arch.replace("sm_", "")
        build = subprocess.run([nvcc, "-std=c++17", "-O3", "-I", ROOT, f"-gencode=arch=compute_{arch},code=sm_{arch}",
                                "-Xptxas", "-v", "-c", src, "-o", obj], capture_output=True, text=True)
        if build.returncode != 0:
            sys.exit(build.stderr)
        tools = tool_dir()
        env = dict(os.environ, NVDISASM_PATH=tools, PATH=tools + os.pathsep + os.environ.get("PATH", ""))
        dump = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", obj], capture_output=True, text=True, env=env)
        if dump.returncode != 0:
            sys.exit(f"sass_mix: cuobjdump: {dump.stderr}")
        sass = dump.stdout
        if os.environ.get("SASS_MIX_DUMP"):
            open(os.environ["SASS_MIX_DUMP"], "w").write(sass)
    usage, name = {}, None
    for line in build.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and name:
            usage.setdefault(name, {})["spill"] = int(m.group(1))
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            usage.setdefault(name, {})["regs"] = int(m.group(1))
    for fname, code in sorted(parse_functions(sass).items()):
        if args.kernel not in fname:
            continue
        u = usage.get(fname, {})
        print(f"{fname}: {u.get('regs', '?')} registers, {u.get('spill', '?')} bytes spilled, {len(code)} instructions")
        for start, end, body in product_loops(code, args.all_loops):
            kinds = collections.Counter(body)
            products = kinds["HMMA"] + kinds["HGMMA"]
            memory = sum(v for k, v in kinds.items() if k in ("LDG", "STG", "LDGSTS"))
            if products:
                print(f"  loop {start:#x}-{end:#x}: {len(body)} instructions, {products} products, "
                      f"{len(body) / products:.2f} per product")
            else:
                print(f"  loop {start:#x}-{end:#x}: {len(body)} instructions, {memory} global loads/stores"
                      + (f", {len(body) / memory:.1f} per access" if memory else ""))
            print("    " + ", ".join(f"{k} {v}" for k, v in kinds.most_common(args.top)))


if __name__ == "__main__":
    main()
