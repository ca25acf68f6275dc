"""Task longformer_span_qa: global attention on exactly <s> and the question; the span head in checkpoints."""

import logging
import os

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks

import fairseq_longformer
import qa_fixtures as qf
from data_prep.qa.cli import main as prep_main
from fairseq_longformer.modules.span_head import SPAN_HEAD

USER_DIR = os.path.dirname(fairseq_longformer.__file__)
TINY = ["--encoder-layers", "2", "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
        "--encoder-attention-heads", "2", "--attention-window", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa_task")
    paragraphs = qf.round_trip_squad()["data"][0]["paragraphs"] + [
        # a question holding '</s>' and a long question (cut to --max-question-tokens)
        {"context": "one two three four", "qas": [
            {"id": "eos", "question": "which </s> number ?", "answers": [{"text": "three", "answer_start": 8}]},
            {"id": "long", "question": " ".join(f"w{i}" for i in range(20)),
             "answers": [{"text": "four", "answer_start": 14}]}]}]
    train = qf.write_json(root / "train.json", qf.squad(paragraphs))
    assert prep_main(["--train", train, "--valid", train, "--output", str(root / "bin"), "--tokenizer", "whitespace",
                      "--max-positions", "20", "--doc-stride", "4", "--max-question-tokens", "8", "--no-progress"]) == 0
    return str(root / "bin")


def _task(data, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        data, "--user-dir", USER_DIR, "--task", "longformer_span_qa", "--criterion", "span_qa",
        "--arch", "longformer_roberta", *TINY, "--optimizer", "adam", "--cpu", *extra])
    return args, tasks.setup_task(args)


def _batch(task, split="valid"):
    task.load_dataset(split)
    dataset = task.dataset(split)
    return dataset.collater([dataset[i] for i in range(len(dataset))])


def test_global_mask_is_exactly_bos_and_the_question(data):
    _, task = _task(data)
    batch = _batch(task)
    _, _, _, examples = qf.read_split(data, "valid")
    question_length = {row: e["doc_offset"] - 3 for e in examples for row, _, _ in e["chunks"]}
    mask = batch["net_input"]["global_attention_mask"]
    tokens = batch["net_input"]["src_tokens"]
    assert mask.dtype == torch.bool and mask.shape == tokens.shape
    for i, row in enumerate(batch["id"].tolist()):
        expected = torch.zeros(tokens.shape[1], dtype=torch.bool)
        expected[: 1 + question_length[row]] = True   # <s> + every (kept) question token
        assert torch.equal(mask[i], expected), row
    assert tokens.eq(task.source_dictionary.pad()).any()  # padded rows: padding is never global
    assert {question_length[r] for r in batch["id"].tolist()} >= {8}  # the long question, cut to 8 tokens


def test_global_attention_none_sends_no_mask(data):
    _, task = _task(data, "--global-attention", "none")
    assert "global_attention_mask" not in _batch(task)["net_input"]


def test_span_head_logits_and_gold_positions_in_a_batch(data):
    args, task = _task(data)
    model = task.build_model(args)
    batch = _batch(task)
    logits, _ = model(**batch["net_input"], span_head_name=SPAN_HEAD)
    assert logits.shape == (*batch["net_input"]["src_tokens"].shape, 2)
    assert batch["starts"].shape == batch["ends"].shape and (batch["starts"] >= -1).all()


def test_model_without_positions_for_the_data_is_refused(data):
    args, task = _task(data, "--max-positions", "16")
    with pytest.raises(ValueError, match="re-run longformer-prep-qa with --max-positions 16"):
        task.build_model(args)


def test_span_head_is_saved_restored_added_and_dropped(data, tmp_path, caplog):
    args, task = _task(data)
    model = task.build_model(args)
    with torch.no_grad():
        model.span_heads[SPAN_HEAD].out_proj.weight.fill_(0.5)
    state = model.state_dict()
    head_keys = {k for k in state if k.startswith("span_heads.")}
    assert head_keys == {"span_heads.span_qa.out_proj.weight", "span_heads.span_qa.out_proj.bias"}

    # a QA checkpoint loads strictly into a QA model, head included
    fresh = task.build_model(args)
    fresh.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    assert torch.equal(fresh.span_heads[SPAN_HEAD].out_proj.weight, state["span_heads.span_qa.out_proj.weight"])

    # a pretrained model without a head (restore-file of a converted directory): the fresh head is kept
    pretrained = {k: v for k, v in state.items() if k not in head_keys}
    fresh = task.build_model(args)
    kept = fresh.span_heads[SPAN_HEAD].out_proj.weight.clone()
    fresh.load_state_dict(pretrained, strict=True)
    assert torch.equal(fresh.span_heads[SPAN_HEAD].out_proj.weight, kept)

    # a model without span heads (e.g. masked-LM training restored from a QA checkpoint) drops it ...
    plain = fairseq_longformer.LongformerRobertaModel.build_model(args, task)
    with caplog.at_level(logging.WARNING):
        plain.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    assert "dropping span head 'span_qa'" in caplog.text and len(plain.span_heads) == 0
    # ... unless heads are loaded from the checkpoint (the hub loader's load_checkpoint_heads)
    args.load_checkpoint_heads = True
    plain = fairseq_longformer.LongformerRobertaModel.build_model(args, task)
    plain.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    assert torch.equal(plain.span_heads[SPAN_HEAD].out_proj.weight, state["span_heads.span_qa.out_proj.weight"])


def test_missing_data_is_refused(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="longformer-prep-qa --output writes"):
        _task(str(tmp_path))
    _, task = _task(data)
    with pytest.raises(FileNotFoundError, match="prepare split 'test'"):
        task.load_dataset("test")


def test_checkpoint_utils_builds_the_head_from_the_task(data, tmp_path):
    """What fairseq-validate and longformer-qa-predict do: rebuild from the checkpoint's cfg, head included."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    args, task = _task(data)
    model = task.build_model(args)
    cfg = convert_namespace_to_omegaconf(args)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does
    trainer.save_checkpoint(str(tmp_path / "qa.pt"), {})
    models, _, loaded_task = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "qa.pt")])
    assert SPAN_HEAD in models[0].span_heads
    for key, value in model.state_dict().items():
        assert torch.equal(models[0].state_dict()[key], value), key
    assert loaded_task.cfg.global_attention == "question"

    # The hub interface applies the task's rule (the mode 'question' is global_attention.py's 'first-segment').
    from fairseq_longformer.hub import LongformerRobertaHubInterface

    hub = LongformerRobertaHubInterface(cfg, loaded_task, models[0])
    batch = _batch(loaded_task)
    tokens, expected = batch["net_input"]["src_tokens"], batch["net_input"]["global_attention_mask"]
    assert hub.global_attention == "first-segment"
    assert torch.equal(hub.global_attention_mask(tokens).bool(), expected.bool())
    assert expected[:, 1].all() and not expected.all()
