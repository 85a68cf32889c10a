"""Compile every Triton kernel variant for sm_90 (no GPU needed). Run as a script in a process
without TRITON_INTERPRET (the interpreter replaces @triton.jit functions); prints one line per
variant: ``ok NAME`` or ``FAIL NAME: error``. Used by tests/test_triton_compile.py."""

import os
import sys

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
            b1 = max(64, min(1024, 4096 // (kp * kp)))
            b2 = max(128, min(2048, 8192 // (kp * kp)))
            for exact in ((False, True) if k == 2 else (False,)):
                yield (f"pass1-{dt}-K{k}-exact{int(exact)}", kstep._pass1, PASS1, dt,
                       dict(KP=kp, BLOCK=b1, RBLOCK=64, EXACT=exact, NB=16))
            yield f"pass2-{dt}-K{k}", kstep._pass2, PASS2, dt, dict(KP=kp, BLOCK=b2)
    for exact in (False, True):
        yield f"solve-exact{int(exact)}", ksolve._solve_mu_kernel, SOLVE, "fp32", dict(
            KP=2, EXACT=exact, NB=16)


def main() -> int:
    failed = 0
    for name, fn, sig, dt, constexprs in variants():
        signature = {n: t.format(dt=dt) for n, t in sig.items()}
        signature.update({n: "constexpr" for n in constexprs})
        try:
            triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                           target=TARGET)
            print("ok", name, flush=True)
        except Exception as exc:  # noqa: BLE001 - report every variant
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
