"""Compile every Triton kernel ahead of time for a GPU architecture, with no GPU present.

The CPU interpreter (TRITON_INTERPRET=1) checks the kernels' arithmetic but not that they compile;
this builds real cubins with the ptxas bundled in the triton wheel and reports registers and
spills (stack bytes) per kernel, which is how the default tile sizes were chosen.

    TRITON_INTERPRET=0 python -m triton_kernels.triton_aot --arch 90 --dtype fp16 bf16

Must run with TRITON_INTERPRET unset or 0 (set before triton_kernels is imported).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_POINTERS_INPUT = {"Q", "K", "V", "O", "Out", "QG", "KG", "VG", "DO", "DQ", "DK", "DV", "DQG", "DKG", "DVG"}
_POINTERS_F32 = {"Lse", "Delta", "KeyBias", "PadBias", "OPart", "MPart", "LPart", "DQPart", "DKPart", "DVPart"}
_POINTERS_I32 = {"GIdx", "GCount", "Plan", "NTiles", "Dil"}
_FLOAT_SCALARS = {"qk_scale", "sm_scale", "p_drop"}


@dataclass
class Build:
    kernel: str
    dtype: str
    dropout: bool
    registers: int | None
    stack_bytes: int | None


def _kernels(head_dim: int, dtype: str):
    from . import triton_global as G
    from . import triton_local as L
    from .triton_attention import default_config

    import torch

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    cfg = default_config(torch.device("cuda"), head_dim, torch_dtype)
    fwd = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps)
    bwd = dict(BLOCK_M=cfg.bwd_block_m, BLOCK_N=cfg.bwd_block_n, num_warps=cfg.bwd_num_warps)
    return [
        (L.local_fwd_kernel, dict(HAS_BIAS=True, HAS_GLOBAL=True), fwd),
        (L.local_bwd_dq_kernel, dict(HAS_BIAS=True, HAS_GLOBAL=True), bwd),
        (L.local_bwd_dkdv_kernel, dict(HAS_BIAS=True), bwd),
        (G.global_fwd_kernel, dict(HAS_PAD=True), fwd),
        (G.global_bwd_dq_kernel, dict(HAS_PAD=True), bwd),
        (G.global_bwd_dkdv_kernel, dict(HAS_PAD=True), bwd),
        (G.global_keys_bwd_kernel, {}, bwd),
        (L.row_dot_kernel, {}, dict(BLOCK_M=64, BLOCK_N=0, num_warps=4)),
    ], cfg.num_stages


def _signature(fn, dtype: str, constexprs: dict) -> dict:
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _POINTERS_INPUT:
            sig[name] = "*" + dtype
        elif name in _POINTERS_F32:
            sig[name] = "*fp32"
        elif name in _POINTERS_I32:
            sig[name] = "*i32"
        elif name in _FLOAT_SCALARS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return (int(regs.group(1)) if regs else None, int(stack.group(1)) if stack else None)


def build_all(arch: int = 90, dtypes=("fp16",), head_dim: int = 64, dropout=(False,), only: str = "") -> list[Build]:
    """Compile each kernel (whose name contains ``only``) for ``sm_<arch>`` with the default tiles.

    Raises on the first kernel that fails to compile.
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("triton_aot: unset TRITON_INTERPRET (or set it to 0); the interpreter does not compile")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    block_d = max(16, triton.next_power_of_2(head_dim))
    builds = []
    for dtype in dtypes:
        kernels, num_stages = _kernels(head_dim, dtype)
        for fn, flags, launch in kernels:
            if only not in fn.fn.__name__:
                continue
            for drop in dropout:
                params = inspect.signature(fn.fn).parameters
                if drop and "DROPOUT" not in params:
                    continue
                constexprs = dict(flags, DROPOUT=drop, PRECISION="tf32", BLOCK_D=block_d,
                                  BLOCK_M=launch["BLOCK_M"], BLOCK_N=launch["BLOCK_N"])
                constexprs = {name: value for name, value in constexprs.items() if name in params}
                src = ASTSource(fn=fn, signature=_signature(fn, dtype, constexprs), constexprs=constexprs)
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                          options=dict(num_warps=launch["num_warps"], num_stages=num_stages))
                regs, stack = _resource_usage(compiled.asm["cubin"])
                builds.append(Build(fn.fn.__name__, dtype, drop, regs, stack))
    return builds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (80 = A100, 90 = H100)")
    parser.add_argument("--dtype", nargs="+", default=["fp16", "bf16", "fp32"], choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dropout", action="store_true", help="also build the dropout variants")
    parser.add_argument("--only", default="", help="build only kernels whose name contains this")
    args = parser.parse_args(argv)
    builds = build_all(args.arch, args.dtype, args.head_dim, (False, True) if args.dropout else (False,), args.only)
    print(f"{'kernel':26s} {'dtype':5s} {'dropout':7s} {'regs':>5s} {'spill(stack B)':>14s}")
    for b in builds:
        print(f"{b.kernel:26s} {b.dtype:5s} {str(b.dropout):7s} {b.registers!s:>5s} {b.stack_bytes!s:>14s}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
