"""Compile every Triton kernel ahead of time for a GPU architecture, with no GPU present.

The CPU interpreter (TRITON_INTERPRET=1) checks the kernels' arithmetic but not that they compile;
this builds real cubins with the ptxas bundled in the triton wheel and reports, per kernel, registers
per thread, spills (stack bytes) and shared memory, which is how the default tile sizes were chosen.

The launches are not described by hand: each case below runs the op's own host code
(``triton_attention._forward`` and ``_backward``) on CPU tensors of its shape, dtype and layout with
kernel launches recorded instead of run, and builds each recorded launch the way the JIT would: the
JIT's own argument specialisation (16-byte aligned pointers, integers divisible by 16, strides of 1
folded to constants), the same constexprs, tiles and warps. So what is built is what a GPU would
launch for that call.

    TRITON_INTERPRET=0 python -m triton_kernels.triton_aot --arch 90                 # every case
    TRITON_INTERPRET=0 python -m triton_kernels.triton_aot --cases d64-bf16 charlm   # some of them

Must run with TRITON_INTERPRET unset or 0 (set before triton_kernels is imported).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

# Shared memory one thread block may use, by compute capability (CUDA C Programming Guide, "Technical
# Specifications per Compute Capability": 227 KB on 9.0, 163 KB on 8.0, 99 KB on 8.6/8.9).
MAX_SHARED_BYTES = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


@dataclass(frozen=True)
class Case:
    """One call of the op whose launches get built: the shapes and options production uses."""

    name: str
    dtype: str  # "fp16", "bf16", "fp32"
    head_dim: int = 64
    precision: str = "tf32"  # tl.dot input precision of float32 inputs ("ieee" is torch's default)
    dropout: float = 0.0
    causal: bool = False
    window: int = 512
    dilation: tuple[int, ...] = (1,) * 10 + (2, 3)
    seq_len: int = 4096
    token_major: bool = False  # inputs are [T, B, H, D] storage seen as [B, H, T, D] (fairseq modules)
    padding: bool = True
    n_global: int = 2
    note: str = field(default="", compare=False)


def _cases() -> list[Case]:
    cases = []
    for dtype, precision in (("fp16", "tf32"), ("bf16", "tf32"), ("fp32", "ieee"), ("fp32", "tf32")):
        for dropout in (0.0, 0.1):
            tag = f"d64-{dtype}" + (f"-{precision}" if dtype == "fp32" else "") + ("-dropout" if dropout else "")
            cases.append(Case(tag, dtype, precision=precision, dropout=dropout,
                              note="head_dim 64, window 512, dilation on 2 heads, padding and 2 global tokens"))
    # The small char-LM (configs/char_lm/small.yaml): 8 heads of 64 + 64 relative dims = 128, causal,
    # dilation 2-4 on the last 2 heads of the upper layers, --fp16, phase 2's 4,096 tokens.
    for dropout in (0.0, 0.2):
        cases.append(Case("charlm" + ("-dropout" if dropout else ""), "fp16", head_dim=128, dropout=dropout,
                          causal=True, dilation=(1,) * 6 + (4, 4), padding=False, n_global=0,
                          note="char-LM: head_dim 128, causal, window 512, dilation 4 on 2 of 8 heads"))
    # longformer_roberta_base masked-LM pretraining: [T, B, H, D] views, no global token, dropout 0.1.
    cases.append(Case("roberta-dropout", "fp16", dropout=0.1, dilation=(1,) * 12, token_major=True, padding=False,
                      n_global=0, note="RoBERTa-base MLM: [T, B, H, D] input, window 512, attention dropout 0.1"))
    return cases


CASES = {case.name: case for case in _cases()}


@dataclass
class Build:
    kernel: str
    case: str
    registers: int | None
    stack_bytes: int | None
    shared_bytes: int


@dataclass
class _Launch:
    kernel: object  # triton JITFunction
    args: tuple
    kwargs: dict
    compiled: object = None  # the CompiledKernel that ran, where launches were run


@contextlib.contextmanager
def _recorded_launches(run: bool = False):
    """Inside the block every ``kernel[grid](...)`` is recorded; it is also run (and its compiled
    kernel kept) only if ``run``."""
    from triton.runtime.jit import JITFunction

    launches: list[_Launch] = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(_Launch(self, args, kwargs))
        if run:
            launches[-1].compiled = original(self, *args, grid=grid, warmup=warmup, **kwargs)
            return launches[-1].compiled

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


def _inputs(case: Case, device: str):
    """q, k, v, q_global, k_global, v_global (None without globals), padding and global masks."""
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[case.dtype]
    B, H, T, D = 1, len(case.dilation), case.seq_len, case.head_dim

    def tensor():
        shape = (T, B, H, D) if case.token_major else (B, H, T, D)
        x = torch.randn(shape, dtype=dtype, device=device)
        return (x.permute(1, 2, 0, 3) if case.token_major else x).requires_grad_()

    pad = glob = None
    if case.padding:
        pad = torch.zeros(B, T, dtype=torch.bool, device=device)
        pad[:, T - 100:] = True
    if case.n_global:
        glob = torch.zeros(B, T, dtype=torch.bool, device=device)
        glob[:, :case.n_global] = True
    projections = (tensor(), tensor(), tensor()) if case.n_global else (None, None, None)
    return (tensor(), tensor(), tensor(), *projections, pad, glob)


def _launches(case: Case) -> list[_Launch]:
    """Run the op's forward and backward host code for ``case`` on CPU tensors; the kernel launches."""
    import torch

    from . import triton_attention as ta

    q, k, v, qg, kg, vg, pad, glob = _inputs(case, "cpu")
    config = ta.default_config(torch.device("cuda"), case.head_dim, q.dtype)
    statics = ta._Statics(case.window, case.dilation, case.causal, case.head_dim ** -0.5, case.dropout, 1234,
                          tuple(ta.dataclasses.astuple(config)), case.precision)
    plan = ta._Plan.build(q, pad, glob, statics)
    lse = torch.zeros(q.shape[:3], dtype=torch.float32)
    with torch.no_grad(), _recorded_launches() as launches:
        out, _ = ta._forward(plan, q, k, v, qg, kg, vg)
        ta._backward(plan, torch.zeros_like(out), q, k, v, qg, kg, vg, out, lse)
    return launches


def jit_builds(cases) -> list[Build]:
    """On a CUDA GPU: run each case's forward and backward through the op and report what the JIT built
    and loaded for it (registers and spills as the driver reports them, shared memory)."""
    import torch

    from . import longformer_attention

    builds = []
    for name in cases:
        case = CASES[name]
        q, k, v, qg, kg, vg, pad, glob = _inputs(case, "cuda")
        precision = torch.backends.cuda.matmul.fp32_precision
        torch.backends.cuda.matmul.fp32_precision = case.precision
        try:
            with _recorded_launches(run=True) as launches:
                out = longformer_attention(q, k, v, case.window, case.dilation, case.causal, pad, glob, qg, kg, vg,
                                           scale=case.head_dim ** -0.5, dropout_p=case.dropout, backend="triton")
                out.backward(torch.randn_like(out))
                torch.cuda.synchronize()
        finally:
            torch.backends.cuda.matmul.fp32_precision = precision
        for launch in launches:
            kernel = launch.compiled
            builds.append(Build(launch.kernel.fn.__name__, name, kernel.n_regs, kernel.n_spills,
                                kernel.metadata.shared))
    return builds


def _compile(launch: _Launch, arch: int):
    """Build one recorded launch for ``sm_<arch>`` exactly as the JIT would (same specialisation)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


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


def build_all(arch: int = 90, cases=("d64-bf16",), only: str = "") -> list[Build]:
    """Build every kernel launch (whose kernel name contains ``only``) of each case for ``sm_<arch>``.

    Raises on the first launch that fails to compile.
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("triton_aot: unset TRITON_INTERPRET (or set it to 0); the interpreter does not compile")
    unknown = [name for name in cases if name not in CASES]
    if unknown:
        raise SystemExit(f"triton_aot: unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    builds = []
    for name in cases:
        for launch in _launches(CASES[name]):
            kernel = launch.kernel.fn.__name__
            if only not in kernel:
                continue
            compiled = _compile(launch, arch)
            regs, stack = _resource_usage(compiled.asm["cubin"])
            builds.append(Build(kernel, name, regs, stack, compiled.metadata.shared))
    return builds


def markdown_table(builds: list[Build], arch: int) -> str:
    """Kernels as rows, cases as columns: ``registers / spill stack bytes / shared KiB``."""
    cases = list(dict.fromkeys(b.case for b in builds))
    kernels = list(dict.fromkeys(b.kernel for b in builds))
    cell = {(b.kernel, b.case): b for b in builds}
    lines = ["| kernel | " + " | ".join(cases) + " |", "|---|" + "---|" * len(cases)]
    for kernel in kernels:
        cells = []
        for case in cases:
            b = cell.get((kernel, case))
            cells.append("" if b is None else f"{b.registers} / {b.stack_bytes} / {b.shared_bytes / 1024:.0f}")
        lines.append(f"| {kernel} | " + " | ".join(cells) + " |")
    limit = MAX_SHARED_BYTES.get(arch)
    over = [b for b in builds if limit and b.shared_bytes > limit]
    lines.append("")
    lines.append(f"sm_{arch}; cells: registers per thread / spill stack bytes / shared memory KiB"
                 + (f" (limit {limit // 1024} KiB per block)" if limit else ""))
    for b in over:
        lines.append(f"OVER THE SHARED-MEMORY LIMIT: {b.kernel} in {b.case} needs {b.shared_bytes} bytes")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (80 = A100, 90 = H100)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE",
                        help=f"which calls to build (default: all): {', '.join(CASES)}")
    parser.add_argument("--only", default="", help="build only kernels whose name contains this")
    parser.add_argument("--jit", action="store_true",
                        help="on a CUDA GPU: run the cases and report what the JIT compiled (no --arch)")
    args = parser.parse_args(argv)
    for name in args.cases:
        print(f"{name}: {CASES[name].note}")
    if args.jit:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("triton_aot --jit needs a CUDA GPU; without one, build ahead of time (no --jit)")
        major, minor = torch.cuda.get_device_capability()
        args.arch = 10 * major + minor
        builds = [b for b in jit_builds(args.cases) if args.only in b.kernel]
    else:
        builds = build_all(args.arch, args.cases, args.only)
    print()
    print(markdown_table(builds, args.arch))
    sys.stdout.flush()
    limit = MAX_SHARED_BYTES.get(args.arch)
    if limit and any(b.shared_bytes > limit for b in builds):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
