"""The span_qa criterion's losses against brute force, and the predictor's span search against all pairs."""

import itertools
import math

import pytest
import torch

from fairseq_longformer.criterions.span_qa import SpanQaCriterion, gold_mask, span_nll
from fairseq_longformer.qa_predict import RowSpan, answer_question, best_spans, document_bounds

PAD = 1


class FixedLogits(torch.nn.Module):
    """A stand-in model returning given start/end logits (what the span head outputs), checking its inputs."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, src_tokens, span_head_name=None, global_attention_mask=None):
        assert span_head_name == "span_qa" and global_attention_mask is not None
        return self.logits, {}


class Task:
    class source_dictionary:  # noqa: N801  what FairseqCriterion reads
        @staticmethod
        def pad():
            return PAD

    target_dictionary = source_dictionary


def _brute_force_nll(logits, length, positions):
    """-log of the summed softmax probability over the distinct gold positions, in plain Python floats."""
    z = sum(math.exp(v) for v in logits[:length])
    return -math.log(sum(math.exp(logits[p]) / z for p in set(positions)))


def _sample():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 9, 2, generator=generator) * 3
    lengths = [9, 7, 5]
    tokens = torch.full((3, 9), 7)
    for row, n in enumerate(lengths):
        tokens[row, n:] = PAD
    # row 0: three occurrences, two sharing a start (e.g. "Obama" and "Obama Jr."); row 1: one; row 2: no answer
    starts = torch.tensor([[4, 4, 6], [3, -1, -1], [0, -1, -1]])
    ends = torch.tensor([[4, 5, 7], [5, -1, -1], [0, -1, -1]])
    sample = {"net_input": {"src_tokens": tokens, "global_attention_mask": tokens.eq(0)},
              "starts": starts, "ends": ends, "ntokens": sum(lengths)}
    return logits, lengths, sample


@pytest.mark.parametrize("span_loss", ["or", "first"])
def test_criterion_loss_matches_brute_force(span_loss):
    logits, lengths, sample = _sample()
    criterion = SpanQaCriterion(Task(), span_loss=span_loss)
    loss, sample_size, log = criterion(FixedLogits(logits), sample)

    expected = 0.0
    for row, n in enumerate(lengths):
        for index, key in enumerate(("starts", "ends")):
            gold = [p for p in sample[key][row].tolist() if p >= 0]
            expected += _brute_force_nll(logits[row, :, index].tolist(), n, gold if span_loss == "or" else gold[:1])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert sample_size == 3 and log["nsentences"] == 3

    # accuracy counts a row when its arg-max start (end) is any gold position
    for index, key in enumerate(("starts", "ends")):
        correct = 0
        for row, n in enumerate(lengths):
            best = max(range(n), key=lambda t: logits[row, t, index].item())
            correct += best in sample[key][row].tolist()
        assert log[f"{key[:-1]}_correct"] == correct


def test_or_loss_is_never_above_first_and_equal_with_one_gold():
    logits, lengths, sample = _sample()
    padding = sample["net_input"]["src_tokens"].eq(PAD)
    first = span_nll(logits[..., 0], padding, gold_mask(sample["starts"], 9, first_only=True))
    any_ = span_nll(logits[..., 0], padding, gold_mask(sample["starts"], 9, first_only=False))
    assert (any_ <= first + 1e-6).all()
    assert torch.allclose(any_[1:], first[1:])  # rows 1 and 2 have one gold start


def test_gold_mask_ignores_padding_and_duplicates():
    mask = gold_mask(torch.tensor([[2, 2, -1], [0, -1, -1]]), 4, first_only=False)
    assert mask.tolist() == [[False, False, True, False], [True, False, False, False]]


def test_best_spans_against_all_pairs():
    generator = torch.Generator().manual_seed(0)
    start, end = torch.randn(4, 20, generator=generator), torch.randn(4, 20, generator=generator)
    doc_start, doc_end = torch.tensor([5, 3, 8, 6]), torch.tensor([19, 12, 9, 6 + 1])
    for max_len in (1, 3, 30):
        score, first, last = best_spans(start, end, doc_start, doc_end, max_len)
        for row in range(4):
            pairs = [(s, e) for s, e in itertools.product(range(20), repeat=2)
                     if doc_start[row] <= s <= e < doc_end[row] and e - s < max_len]
            s, e = max(pairs, key=lambda p: (start[row, p[0]] + end[row, p[1]]).item())
            assert (first[row].item(), last[row].item()) == (s, e)
            assert score[row].item() == pytest.approx((start[row, s] + end[row, e]).item())


def test_document_bounds_of_padded_rows():
    eos = 2
    tokens = torch.tensor([[0, 9, 9, eos, eos, 5, 6, 7, eos],
                           [0, 9, eos, eos, 5, eos, PAD, PAD, PAD]])
    doc_start, doc_end = document_bounds(tokens, eos, PAD)
    assert doc_start.tolist() == [5, 4] and doc_end.tolist() == [8, 5]


def test_answer_question_takes_the_best_chunk_and_maps_to_exact_text():
    context = "Zürich  is\tbig; Genève\u00a0too."
    offsets = [0, 6, 8, 10, 11, 15, 16, 22, 23, 27]  # Zürich / is / big; / Genève / too.
    example = {"id": "q", "context": context, "offsets": offsets, "doc_offset": 4,
               "chunks": [[0, 0, 3], [1, 2, 3]]}  # chunk 0: tokens 0-2, chunk 1: tokens 2-4
    rows = {0: RowSpan(score=1.0, start=4, end=4, null_score=0.5, doc_start=4, doc_end=7),
            1: RowSpan(score=2.0, start=5, end=6, null_score=3.5, doc_start=4, doc_end=7)}
    assert answer_question(example, rows, None) == "Genève\u00a0too."   # row 1 wins: doc tokens 3..4
    # no-answer score = the lowest over chunks (0.5); 0.5 - 2.0 = -1.5 is not above -1.0 but is above -1.6
    assert answer_question(example, rows, -1.0) == "Genève\u00a0too."
    assert answer_question(example, rows, -1.6) == ""
    with pytest.raises(ValueError, match="different longformer-prep-qa runs"):
        answer_question({**example, "doc_offset": 5}, rows, None)
