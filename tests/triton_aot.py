"""Compile every Triton kernel variant for sm_90 (no GPU needed). Run as a script in a process
without TRITON_INTERPRET (the interpreter replaces @triton.jit functions); prints one line per
variant: ``ok NAME vld=N vst=M regs=R spill=S`` (N, M: 128-bit global loads / stores in the PTX;
R: registers a thread from ptxas for the K = 2 aligned variants and pass 1 of K = 3, 5, else -1;
S: local-memory loads and stores (spills) inside the streaming loops of pass 1, before its ticket
atomic, -1 where not measured) or ``FAIL NAME: error``.
Used by tests/test_triton_compile.py.

Block sizes come from the launcher (``block_params``). Pointers are compiled as 16-byte aligned
and, in the ``-aligned`` variants, the row stride as a multiple of 16 elements: what Triton's
launch-time specialisation sees for a FlatGrads buffer (rows padded to 64 bytes).
"""

import os
import re
import subprocess
import sys
import tempfile

assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET"

import triton  # noqa: E402
from csdfd.kernels import solve_mu as ksolve  # noqa: E402
from csdfd.kernels import uvs_cgr as kstep  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PASS1 = dict(buf_ptr="*{dt}", stride="i64", split="i64", P="i64", part_ptr="*fp32",
             ticket_ptr="*i32", diag_ptr="*fp32", coef_ptr="*fp32", k="i32", c="fp32",
             tau="fp32", iters="i32", beta0="fp32", beta_max="fp32", rel="fp32")
PASS2 = dict(buf_ptr="*{dt}", stride="i64", out_ptr="*{dt}", split="i64", P="i64",
             coef_ptr="*fp32", k="i32")
SOLVE = dict(gram_ptr="*fp32", mu_ptr="*fp32", k="i32", c="fp32", iters="i32", beta0="fp32",
             beta_max="fp32", rel="fp32")


def variants():
    for dt in ("fp32", "bf16", "fp16"):
        for k in (2, 3, 5):
            kp = max(2, triton.next_power_of_2(k))
            cfg = kstep.block_params(kp)
            for aligned in (True, False) if k == 2 else (True,):
                tag = f"{dt}-K{k}-{'aligned' if aligned else 'unaligned'}"
                for exact in ((False, True) if k == 2 and aligned else (False,)):
                    yield (f"pass1-{tag}-exact{int(exact)}", kstep._pass1, PASS1, dt, aligned,
                           dict(KP=kp, BLOCK=cfg["block1"], RBLOCK=cfg["rblock"], EXACT=exact,
                                NB=16), (cfg["warps1"], cfg["maxnreg1"]))
                yield (f"pass2-{tag}", kstep._pass2, PASS2, dt, aligned,
                       dict(KP=kp, BLOCK=cfg["block2"]), (cfg["warps2"], None))
    for exact in (False, True):
        yield (f"solve-exact{int(exact)}", ksolve._solve_mu_kernel, SOLVE, "fp32", True,
               dict(KP=2, EXACT=exact, NB=16), (4, None))


def compile_variant(fn, sig, dt, aligned, constexprs, launch):
    """PTX of one variant, specialised as a launch would specialise it; ``launch`` is
    (num_warps, maxnreg)."""
    signature = {n: t.format(dt=dt) for n, t in sig.items()}
    signature.update({n: "constexpr" for n in constexprs})
    names = list(sig)
    hinted = [n for n, t in sig.items() if t.startswith("*")] + (["stride"] if aligned else [])
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in hinted if n in names}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    warps, maxnreg = launch
    options = dict(num_warps=warps) if maxnreg is None else dict(num_warps=warps, maxnreg=maxnreg)
    return triton.compile(src, target=TARGET, options=options).asm["ptx"]


def _tool(name: str) -> str:
    env = os.environ.get("TRITON_PTXAS_PATH") if name == "ptxas" else None
    return env or os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def registers(ptx: str) -> tuple[int, int]:
    """(registers a thread per ``ptxas -v``, :func:`loop_spills` of the SASS), each -1 if the
    tool (ptxas, cuobjdump: both ship with Triton) is missing."""
    if not os.path.exists(_tool("ptxas")):
        return -1, -1
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        try:
            out = subprocess.run([_tool("ptxas"), "-arch=sm_90a", "-v", src, "-o", src + ".cubin"],
                                 capture_output=True, text=True, timeout=300).stderr
            sass = subprocess.run([_tool("cuobjdump"), "-sass", src + ".cubin"],
                                  capture_output=True, text=True, timeout=300).stdout
        except (OSError, subprocess.SubprocessError):
            return -1, -1
    found = re.search(r"Used (\d+) registers", out)
    return (int(found.group(1)) if found else -1), loop_spills(sass)


def loop_spills(sass: str) -> int:
    """Local-memory loads/stores (spills) inside a loop before the first global atomic (pass 1's
    ticket), i.e. in the streaming loops; -1 without an atomic. A loop is the span from a
    backward branch's target to the branch. (A value spilled around a loop costs one store and
    one load per program and is not counted.)"""
    ops = []  # (address, text)
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*)", line)
        if m:
            ops.append((int(m.group(1), 16), m.group(2)))
    ticket = next((a for a, text in ops if "ATOMG" in text), None)
    if ticket is None:
        return -1
    loops = []
    for addr, text in ops:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr < ticket:
            loops.append((int(m.group(1), 16), addr))
    return sum(1 for addr, text in ops if re.search(r"\b(STL|LDL)", text)
               and any(lo <= addr <= hi for lo, hi in loops))


def main() -> int:
    failed = 0
    for name, fn, sig, dt, aligned, constexprs, launch in variants():
        try:
            ptx = compile_variant(fn, sig, dt, aligned, constexprs, launch)
            vld = len(re.findall(r"ld\.global\.v4\.b32", ptx))  # not the .cg partials
            vst = len(re.findall(r"st\.global\.v4\.b32", ptx))
            measured = "-K2-aligned" in name or (name.startswith("pass1") and "-K2-" not in name)
            regs, spill = registers(ptx) if measured else (-1, -1)
            spill = spill if name.startswith("pass1") else -1
            print(f"ok {name} vld={vld} vst={vst} regs={regs} spill={spill}", flush=True)
        except Exception as exc:  # noqa: BLE001 - report every variant
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
