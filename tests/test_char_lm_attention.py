"""Relative window attention of the char LM against a brute-force T x T Transformer-XL reference."""

import math

import pytest
import torch

from fairseq_longformer.modules.layout import merge_heads, split_heads
from fairseq_longformer.modules.relative_window_attention import RelativeWindowSelfAttention, relative_sinusoid


def transformer_xl_reference(module: RelativeWindowSelfAttention, x: torch.Tensor, dilations) -> torch.Tensor:
    """Transformer-XL relative attention spelled out over every (i, j) pair, in float64.

    Uses ``R_{i-j}`` directly (no sin/cos separation) and writes the causal dilated window rule out
    here on its own, so both the algebra and the windowing of the module are checked.
    """
    T, B, C = x.shape
    H, D = module.num_heads, module.head_dim
    q, k, v = (split_heads(t, H).double() for t in module.in_proj(x).chunk(3, dim=-1))
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    R = relative_sinusoid(i - j, module.rel_dim)  # [T, T, rel_dim]
    W_R_R = torch.einsum("hdr,ijr->hijd", module.rel_proj.double(), R)  # [H, T, T, D]
    content = torch.einsum("bhid,bhjd->bhij", q + module.content_bias.double()[None, :, None], k)
    position = torch.einsum("bhid,hijd->bhij", q + module.position_bias.double()[None, :, None], W_R_R)
    scores = (content + position) / math.sqrt(D)
    d = torch.tensor(dilations)[:, None, None]
    delta = i - j
    allowed = (delta >= 0) & (delta % d == 0) & (delta // d <= module.window)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = torch.einsum("bhij,bhjd->bhid", probs, v).to(x.dtype)
    return module.out_proj(merge_heads(out))


@pytest.mark.parametrize("backend", ["dense", "torch"])
@pytest.mark.parametrize("window,dilation,rel_dim", [(4, 1, None), (3, 3, 8), (40, 2, None)])
def test_matches_brute_force_transformer_xl(backend, window, dilation, rel_dim):
    torch.manual_seed(1)
    T, B, C, H = 37, 2, 32, 4
    attn = RelativeWindowSelfAttention(C, H, window, dilation, dilated_heads=2, rel_dim=rel_dim, backend=backend)
    attn.eval()
    x = torch.randn(T, B, C)
    dilations = [1, 1, dilation, dilation]
    expected = transformer_xl_reference(attn, x, dilations)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-4)


def test_position_term_is_exact_at_long_offsets():
    """Absolute angles go through float64, so the separated sin/cos still match R_{i-j} at 23K."""
    attn = RelativeWindowSelfAttention(16, 2, window=8, rel_dim=8).double()
    T = 23_040
    q = torch.randn(1, 2, T, 8, dtype=torch.float64)
    q_ext, k_ext, _ = attn.extended_qkv(q, torch.zeros_like(q), torch.zeros_like(q))
    i, j = T - 1, T - 1 - 5
    got = (q_ext[0, :, i, 8:] * k_ext[0, :, j, 8:]).sum(-1)
    p = torch.einsum("hd,hdr->hr", q[0, :, i] + attn.position_bias, attn.rel_proj)
    want = (p * relative_sinusoid(torch.tensor(i - j), 8)).sum(-1)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="rel_dim"):
        RelativeWindowSelfAttention(32, 4, 8, rel_dim=7)
    with pytest.raises(ValueError, match="dilated_heads"):
        RelativeWindowSelfAttention(32, 4, 8, dilation=2, dilated_heads=5)
