"""Global-attention placement per mode, on single samples and padded batches of different lengths."""

import pytest
import torch

from fairseq_longformer.tasks.global_attention import global_attention_mask

BOS, PAD, EOS = 0, 1, 2


def test_modes_on_a_pair_sample():
    # <s> q q </s> </s> d d d </s>
    tokens = torch.tensor([BOS, 7, 8, EOS, EOS, 9, 9, 9, EOS])
    assert global_attention_mask(tokens, "cls", EOS, PAD).tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert global_attention_mask(tokens, "first-segment", EOS, PAD).tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert not global_attention_mask(tokens, "none", EOS, PAD).any()


def test_padded_batch_rows_get_their_own_first_segment_and_padding_is_never_global():
    tokens = torch.tensor([
        [BOS, 7, EOS, EOS, 9, EOS, PAD, PAD],
        [BOS, 7, 7, 7, EOS, EOS, 9, EOS],
        [BOS, 5, 6, EOS, PAD, PAD, PAD, PAD],
    ])
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
    ], dtype=torch.bool)
    assert torch.equal(global_attention_mask(tokens, "first-segment", EOS, PAD), expected)
    cls = global_attention_mask(tokens, "cls", EOS, PAD)
    assert cls[:, 0].all() and not cls[:, 1:].any()
    # a left-padded row never marks its padding
    left = torch.tensor([[PAD, PAD, BOS, 4, EOS]])
    assert not global_attention_mask(left, "cls", EOS, PAD).any()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="choose one of cls, first-segment, none"):
        global_attention_mask(torch.tensor([0, 2]), "question", EOS, PAD)
