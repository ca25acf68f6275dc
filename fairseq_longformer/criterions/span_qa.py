"""``span_qa``: start/end cross-entropy for extractive QA, one gold span or the OR over all of them.

Each row has gold start positions and the matching end positions (every occurrence of the answer in the
row; ``[0]``, the ``<s>`` token, when the row has none). With ``--span-loss first`` the loss is
``-log p_start(s_1) - log p_end(e_1)`` for the first gold span (BERT's SQuAD loss). With ``--span-loss or``
it is Clark & Gardner (2018)'s loss for distant supervision, used by the Longformer paper (Beltagy et
al., 2020, appendix B) for TriviaQA: ``-log sum_{s in starts} p_start(s) - log sum_{e in ends} p_end(e)``,
so the model only has to get one occurrence right (each position counted once). Probabilities are
softmaxes over the row's non-padding tokens.

Logged: ``loss`` (base 2, per row, as fairseq's criterions), ``start_acc`` / ``end_acc`` (percent of rows
whose most likely start / end is one of its gold positions, whichever the loss).
"""
import math
from dataclasses import dataclass, field

import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics

from ..modules.span_head import SPAN_HEAD

SPAN_LOSSES = ("first", "or")


@dataclass
class SpanQaConfig(FairseqDataclass):
    span_loss: ChoiceEnum(SPAN_LOSSES) = field(
        default="or", metadata={"help": "'or': log of the summed probability of every gold start (and end), as "
                                        "Clark & Gardner 2018; 'first': the first gold span only"})


def gold_mask(positions: torch.Tensor, length: int, first_only: bool) -> torch.Tensor:
    """Bool ``[B, length]``, True at the gold positions; ``positions`` is ``[B, K]`` padded with -1."""
    if first_only:
        positions = positions[:, :1]
    columns = torch.where(positions >= 0, positions, length)  # padding goes to an extra column, dropped below
    mask = torch.zeros(positions.shape[0], length + 1, dtype=torch.bool, device=positions.device)
    return mask.scatter_(1, columns, True)[:, :length]


def masked_scores(logits: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """float32 ``logits`` with the ``padding`` positions at -inf (outside the softmax and the argmax)."""
    return logits.float().masked_fill(padding, float("-inf"))


def span_nll(logits: torch.Tensor, padding: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """``-log sum_{gold} softmax(logits)`` per row; ``padding`` marks positions outside the softmax."""
    return masked_span_nll(masked_scores(logits, padding), gold)


def masked_span_nll(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """:func:`span_nll` of scores already through :func:`masked_scores`."""
    log_probs = torch.log_softmax(scores, dim=-1)
    return -torch.logsumexp(log_probs.masked_fill(~gold, float("-inf")), dim=-1)


@register_criterion("span_qa", dataclass=SpanQaConfig)
class SpanQaCriterion(FairseqCriterion):
    def __init__(self, task, span_loss: str = "or"):
        super().__init__(task)
        self.first_only = span_loss == "first"

    def forward(self, model, sample, reduce=True):
        logits, _ = model(**sample["net_input"], span_head_name=SPAN_HEAD)
        tokens = sample["net_input"]["src_tokens"]
        padding = tokens.eq(self.padding_idx)
        length = tokens.shape[1]
        losses, correct = [], []
        for index, key in enumerate(("starts", "ends")):
            scores = masked_scores(logits[..., index], padding)
            every_gold = gold_mask(sample[key], length, first_only=False)  # accuracy counts any gold position
            gold = gold_mask(sample[key], length, first_only=True) if self.first_only else every_gold
            losses.append(masked_span_nll(scores, gold))
            correct.append(every_gold.gather(1, scores.argmax(-1, keepdim=True)).sum())
        loss = (losses[0] + losses[1]).sum() if reduce else losses[0] + losses[1]
        rows = tokens.shape[0]
        logging_output = {
            "loss": loss.data, "ntokens": sample["ntokens"], "nsentences": rows, "sample_size": rows,
            "start_correct": correct[0].item(), "end_correct": correct[1].item(),
        }
        return loss, rows, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        rows = total("sample_size")
        metrics.log_scalar("loss", total("loss") / max(rows, 1) / math.log(2), rows, round=3)
        if rows:
            metrics.log_scalar("start_acc", 100 * total("start_correct") / rows, rows, round=1)
            metrics.log_scalar("end_acc", 100 * total("end_correct") / rows, rows, round=1)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
