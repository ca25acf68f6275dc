"""Every CPU backend of ``longformer_attention`` against a brute-force per-query loop written here.

The loop enumerates each query's key set straight from the contract in docs/attention.md (it shares no
code with ``triton_kernels``), so a bug in the shared mask helper would show up here too.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from triton_kernels import longformer_attention
from triton_kernels.api import resolve_backend

BACKENDS = ["dense", "torch"]


def brute_force(q, k, v, window, dilation=1, causal=False, key_padding_mask=None, global_mask=None,
                q_global=None, k_global=None, v_global=None, scale=None):
    B, H, T, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    dilations = [dilation] * H if isinstance(dilation, int) else list(dilation)
    pad = torch.zeros(B, T, dtype=torch.bool) if key_padding_mask is None else key_padding_mask
    glob = torch.zeros(B, T, dtype=torch.bool) if global_mask is None else global_mask & ~pad
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    for b in range(B):
        real = [j for j in range(T) if not pad[b, j]]
        globals_ = [j for j in real if glob[b, j]]
        for h in range(H):
            d = dilations[h]
            for i in real:
                if glob[b, i]:
                    keys, qq, kk, vv = real, q_global, k_global, v_global
                else:
                    steps = range(0, window + 1) if causal else range(-(window // 2), window // 2 + 1)
                    reach = {i - m * d for m in steps} if causal else {i + m * d for m in steps}
                    keys = sorted((reach | set(globals_)) & set(real))
                    qq, kk, vv = q, k, v
                scores = torch.stack([(qq[b, h, i].double() * kk[b, h, j].double()).sum() for j in keys])
                probs = torch.softmax(scores * scale, dim=0)
                out[b, h, i] = sum(p * vv[b, h, j].double() for p, j in zip(probs, keys))
    return out


def random_case(B, H, T, D, dtype=torch.float64, padding=None, n_globals=None, seed=0):
    """q/k/v and global projections plus masks. ``padding``: list of (row, 'left'|'right'|'all', count)."""
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(B, H, T, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(6)]
    kpm = None
    if padding:
        kpm = torch.zeros(B, T, dtype=torch.bool)
        for row, side, count in padding:
            if side == "left":
                kpm[row, :count] = True
            elif side == "right":
                kpm[row, T - count:] = True
            else:
                kpm[row] = True
    gm = None
    if n_globals is not None:
        gm = torch.zeros(B, T, dtype=torch.bool)
        for row, count in enumerate(n_globals):
            gm[row, torch.randperm(T, generator=g)[:count]] = True
    return tensors, kpm, gm


CASES = [
    # (B, H, T, D, window, dilation, causal, padding, n_globals)
    dict(B=2, H=2, T=17, D=4, window=4, dilation=1, causal=False),
    dict(B=1, H=2, T=5, D=4, window=16, dilation=1, causal=False),  # T smaller than the window
    dict(B=2, H=2, T=11, D=4, window=0, dilation=1, causal=False),  # window 0: each token itself
    dict(B=2, H=2, T=13, D=4, window=2, dilation=1, causal=True),
    dict(B=2, H=3, T=23, D=4, window=4, dilation=[1, 2, 3], causal=False),
    dict(B=2, H=3, T=23, D=4, window=3, dilation=[3, 1, 2], causal=True),  # odd causal window is fine
    dict(B=3, H=2, T=19, D=4, window=6, dilation=[1, 2], causal=False,
         padding=[(0, "right", 5), (1, "left", 4), (2, "all", 0)]),
    dict(B=3, H=2, T=21, D=4, window=4, dilation=[2, 1], causal=True,
         padding=[(0, "left", 3), (2, "right", 7)]),
    dict(B=3, H=2, T=25, D=4, window=4, dilation=[1, 3], causal=False, n_globals=[3, 0, 1]),
    dict(B=3, H=2, T=25, D=4, window=6, dilation=[1, 2], causal=False, n_globals=[2, 4, 1],
         padding=[(0, "right", 6), (1, "left", 5), (2, "all", 0)]),
    dict(B=2, H=2, T=9, D=4, window=40, dilation=[1, 4], causal=False, n_globals=[9, 1]),
]


def case_id(c):
    return f"T{c['T']}-w{c['window']}-d{c['dilation']}-{'causal' if c['causal'] else 'sym'}" + (
        "-pad" if c.get("padding") else "") + ("-glob" if c.get("n_globals") else "")


def run(backend, c, dtype=torch.float64, **extra):
    (q, k, v, qg, kg, vg), kpm, gm = random_case(
        c["B"], c["H"], c["T"], c["D"], dtype, c.get("padding"), c.get("n_globals"))
    glob = dict(global_mask=gm, q_global=qg, k_global=kg, v_global=vg) if gm is not None else {}
    args = dict(window=c["window"], dilation=c["dilation"], causal=c["causal"], key_padding_mask=kpm, **glob)
    out = longformer_attention(q, k, v, backend=backend, **args, **extra)
    return out, (q, k, v), args


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_brute_force(backend, c, dtype):
    out, (q, k, v), args = run(backend, c, dtype)
    assert out.dtype == dtype and out.shape == q.shape
    expected = brute_force(q, k, v, **args)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)


def test_padding_rows_are_zero_and_globals_on_padding_count_as_padding():
    (q, k, v, qg, kg, vg), kpm, _ = random_case(2, 2, 12, 4, padding=[(0, "right", 4), (1, "all", 0)])
    gm = torch.zeros(2, 12, dtype=torch.bool)
    gm[0, 10] = True  # on padding: ignored
    gm[0, 2] = True
    out = longformer_attention(q, k, v, 4, key_padding_mask=kpm, global_mask=gm, q_global=qg,
                               k_global=kg, v_global=vg, backend="torch")
    assert torch.all(out[0, :, 8:] == 0) and torch.all(out[1] == 0)
    assert torch.all(out[0, :, :8].abs().sum(-1) > 0)


DOCS = Path(__file__).absolute().parent.parent / "docs" / "attention.md"


def documented_worked_examples() -> list[dict[int, tuple[str, set[int]]]]:
    """The tables of the "Worked example" section of docs/attention.md: query -> (kind, key set)."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("### Worked example"):]
    section = section[:section.index("\n## ")]
    tables, rows = [], None
    for line in section.splitlines():
        if line.startswith("| query |"):
            rows = {}
            tables.append(rows)
        elif rows is not None and (m := re.fullmatch(r"\| (\d+) \| (\w+) \| (.+) \|", line)):
            keys = set() if m[3].startswith("none") else {int(j) for j in m[3].split(",")}
            rows[int(m[1])] = (m[2], keys)
        elif not line.startswith("|"):
            rows = None
    return tables


def observed_key_sets(attend, T) -> dict[int, tuple[str, set[int]]]:
    """Each query's key set, read off the op: with q = 0 every allowed key gets the same weight, and
    with v = the identity (2 x identity for the global projections) row i of the output is that
    weight on each key of S(i): 1/|S(i)| for a local query, 2/|S(i)| for a global one, 0 elsewhere."""
    q = torch.zeros(1, 1, T, T, dtype=torch.float64)
    k = torch.randn(1, 1, T, T, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eye = torch.eye(T, dtype=torch.float64)[None, None]
    out = attend(q, k, eye, q, k, 2 * eye)[0, 0]
    found = {}
    for i, row in enumerate(out):
        keys = {j for j in range(T) if row[j] != 0}
        if not keys:
            found[i] = ("padding", keys)
            continue
        weight = row[min(keys)].item()
        kind = "global" if math.isclose(weight * len(keys), 2.0) else "local"
        expected = (2.0 if kind == "global" else 1.0) / len(keys)
        assert all(math.isclose(row[j].item(), expected) for j in keys), (i, row)  # each key once
        found[i] = (kind, keys)
    return found


@pytest.mark.parametrize("backend", BACKENDS + ["brute force"])
def test_contract_worked_example_matches_the_docs(backend):
    non_causal, causal = documented_worked_examples()
    T = 8
    pad = torch.zeros(1, T, dtype=torch.bool)
    pad[0, 7] = True
    glob = torch.zeros(1, T, dtype=torch.bool)
    glob[0, 3] = True

    def op(*args, **kwargs):
        if backend == "brute force":
            return brute_force(*args, **kwargs)
        return longformer_attention(*args, backend=backend, **kwargs)

    def windowed(q, k, v, qg, kg, vg):
        return op(q, k, v, 4, 2, key_padding_mask=pad, global_mask=glob, q_global=qg, k_global=kg, v_global=vg)

    def causal_windowed(q, k, v, *_):
        return op(q, k, v, 2, 2, causal=True, key_padding_mask=pad)

    assert observed_key_sets(windowed, T) == non_causal
    assert observed_key_sets(causal_windowed, T) == causal


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_window_equals_full_attention(backend):
    (q, k, v, *_), _, _ = random_case(2, 3, 15, 8)
    out = longformer_attention(q, k, v, window=2 * 14, backend=backend)
    full = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v
    torch.testing.assert_close(out, full)
    causal = longformer_attention(q, k, v, window=14, causal=True, backend=backend)
    lower = torch.ones(15, 15, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~lower, float("-inf"))
    torch.testing.assert_close(causal, torch.softmax(scores, dim=-1) @ v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_is_applied(backend):
    (q, k, v, *_), _, _ = random_case(1, 2, 9, 4)
    out = longformer_attention(q, k, v, 4, scale=0.3, backend=backend)
    torch.testing.assert_close(out, brute_force(q, k, v, 4, scale=0.3))


GRADCHECK_CASES = [
    dict(B=2, H=2, T=9, D=3, window=2, dilation=[1, 2], causal=False, padding=[(1, "left", 2)],
         n_globals=[2, 1]),
    dict(B=2, H=2, T=8, D=3, window=3, dilation=[2, 1], causal=True, padding=[(0, "right", 3)]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", GRADCHECK_CASES, ids=case_id)
def test_gradcheck(backend, c):
    (q, k, v, qg, kg, vg), kpm, gm = random_case(
        c["B"], c["H"], c["T"], c["D"], torch.float64, c.get("padding"), c.get("n_globals"))
    inputs = [t.requires_grad_() for t in (q, k, v, qg, kg, vg)]

    def fn(q, k, v, qg=None, kg=None, vg=None):
        glob = dict(global_mask=gm, q_global=qg, k_global=kg, v_global=vg) if gm is not None else {}
        return longformer_attention(q, k, v, c["window"], dilation=c["dilation"], causal=c["causal"],
                                    key_padding_mask=kpm, backend=backend, **glob)

    if gm is None:
        inputs = inputs[:3]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_torch_cpu_path_in_many_chunks(monkeypatch, causal):
    # One query block per chunk: every chunk boundary of the forward and of the gradient fold is hit.
    import triton_kernels.blocked as blocked
    monkeypatch.setattr(blocked, "CHUNK_BYTES", 1)
    c = dict(B=2, H=3, T=100, D=3, window=8, dilation=[1, 2, 1], causal=causal, padding=[(1, "left", 9)])
    (q, k, v, *_), kpm, _ = random_case(c["B"], c["H"], c["T"], c["D"], torch.float64, c["padding"])

    def fn(q, k, v):
        return longformer_attention(q, k, v, c["window"], dilation=c["dilation"], causal=causal,
                                    key_padding_mask=kpm, backend="torch")

    inputs = [t.requires_grad_() for t in (q, k, v)]
    out = fn(*inputs)
    torch.testing.assert_close(out, brute_force(q, k, v, c["window"], c["dilation"], causal, kpm))
    upstream = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((out * upstream).sum(), inputs)
    dense = longformer_attention(*inputs, c["window"], dilation=c["dilation"], causal=causal,
                                 key_padding_mask=kpm, backend="dense")
    for g, want in zip(got, torch.autograd.grad((dense * upstream).sum(), inputs)):
        torch.testing.assert_close(g, want)


@pytest.mark.parametrize("path", ["span", "sdpa"])
def test_torch_global_tokens_on_both_cpu_paths(monkeypatch, path):
    # "span": the CPU flash path, one query block per chunk, global keys merged through the log-sum-exp;
    # "sdpa": the single SDPA call (dropout or GPU) with the global keys appended to every span.
    import triton_kernels.blocked as blocked
    if path == "span":
        monkeypatch.setattr(blocked, "CHUNK_BYTES", 1)
    else:
        monkeypatch.setattr(blocked, "use_span_attention", lambda spec, q: False)
    c = dict(B=3, H=3, T=90, D=3, window=8, dilation=[1, 2, 3], causal=False,
             padding=[(0, "right", 11), (1, "left", 9), (2, "all", 0)], n_globals=[4, 1, 2])
    out, (q, k, v), args = run("torch", c)
    torch.testing.assert_close(out, brute_force(q, k, v, **args))
    leaves = [q, k, v, args["q_global"], args["k_global"], args["v_global"]]
    for t in leaves:
        t.requires_grad_()
    upstream = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    grads = {}
    for backend in BACKENDS:
        result = longformer_attention(q, k, v, backend=backend, **args)
        grads[backend] = torch.autograd.grad((result * upstream).sum(), leaves)
    for got, want in zip(grads["torch"], grads["dense"]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("causal", [False, True])
def test_torch_gradients_match_dense_on_larger_inputs(causal):
    c = dict(B=2, H=4, T=301, D=16, window=32 if not causal else 33, dilation=[1, 1, 2, 4], causal=causal,
             padding=[(0, "right", 37), (1, "left", 12)], n_globals=None if causal else [5, 2])
    grads = {}
    for backend in BACKENDS:
        out, (q, k, v), args = run(backend, c, torch.float32)
        leaves = [q, k, v] + ([args["q_global"], args["k_global"], args["v_global"]] if not causal else [])
        for t in leaves:
            t.requires_grad_()
        out = longformer_attention(q, k, v, backend=backend, **args)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads[backend] = (out, torch.autograd.grad((out * upstream).sum(), leaves))
    torch.testing.assert_close(grads["torch"][0], grads["dense"][0], atol=1e-5, rtol=1e-4)
    for got, want in zip(grads["torch"][1], grads["dense"][1]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_keep_dtype_and_float32_accuracy(dtype):
    c = dict(B=1, H=2, T=40, D=8, window=8, dilation=[1, 2], causal=False, n_globals=[2])
    out, (q, k, v), args = run("torch", c, dtype)
    assert out.dtype == dtype
    expected = brute_force(q, k, v, **args)  # from the same rounded inputs, in float64
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_is_random_and_unbiased(backend):
    (q, k, v, *_), _, _ = random_case(1, 1, 10, 4)
    plain = longformer_attention(q, k, v, 4, backend=backend)
    draws = 4000  # independent dropout masks: one per batch row of the same inputs
    runs = longformer_attention(*(x.expand(draws, -1, -1, -1) for x in (q, k, v)), 4, dropout_p=0.5,
                                backend=backend)
    assert not torch.equal(runs[0], runs[1])
    # Inverted dropout keeps the expectation: the mean over many draws approaches the plain output.
    torch.testing.assert_close(runs.mean(0, keepdim=True), plain, atol=0.08, rtol=0)


def test_auto_resolves_to_torch_on_cpu():
    from triton_kernels import blocked

    assert resolve_backend("auto", torch.zeros(1)) is blocked.attention


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(window=3), "odd"),
        (dict(window=-2), "window must be an int >= 0"),
        (dict(window=4.0), "window must be an int"),
        (dict(window=4, dilation=0), "dilation must be an int >= 1"),
        (dict(window=4, dilation=[1, 2]), "dilation has 2 entries but q has 3 heads"),
        (dict(window=4, global_mask="G"), "global_mask needs q_global"),
        (dict(window=4, causal=True, global_mask="G"), "not defined with causal=True"),
        (dict(window=4, q_global="Q"), "without global_mask"),
        (dict(window=4, key_padding_mask="int"), "key_padding_mask must be a bool tensor"),
        (dict(window=4, scale=-1.0), "scale must be a positive number"),
        (dict(window=4, dropout_p=1.0), "dropout_p must be in [0, 1)"),
        (dict(window=4, backend="cuda"), "unknown backend 'cuda'"),
        (dict(window=4, k="short"), "k must match q"),
        (dict(window=4, v="half"), "v must match q"),
        (dict(window=4, q="3d"), "q must be a 4-d tensor"),
        (dict(window=4, global_mask="G", q_global="Q", k_global="K", v_global="short"), "v_global must match q"),
    ],
)
def test_bad_input_errors(kwargs, message):
    B, H, T, D = 2, 3, 10, 4
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    placeholders = {
        "G": torch.zeros(B, T, dtype=torch.bool), "Q": q.clone(), "K": q.clone(),
        "int": torch.zeros(B, T, dtype=torch.int64), "short": torch.randn(B, H, T - 1, D),
        "half": v.half(), "3d": q[0],
    }
    args = {"q": q, "k": k, "v": v}
    args.update({key: placeholders.get(val, val) if isinstance(val, str) and key != "backend" else val
                 for key, val in kwargs.items()})
    with pytest.raises(ValueError, match=_escape(message)):
        longformer_attention(**args)


def _escape(text):
    import re

    return re.escape(text)
