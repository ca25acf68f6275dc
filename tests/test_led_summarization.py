"""Summarization data prep, ROUGE scoring, and the whole LED pipeline with fairseq's own tools:
BART -> longformer-convert-bart -> longformer-prep-summarization -> fairseq-train --task translation ->
longformer-eval-summarization (checked against fairseq-generate) and the hub's sample()."""

import json
import logging
import os
import shutil
from argparse import Namespace

import pytest
import torch

import bpe_fixtures as bf
import fairseq_longformer
import led_fixtures as lf
import roberta_fixtures as rf
from data_prep import prep_summarization
from fairseq.data import Dictionary
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from fairseq_longformer import eval_summarization
from fairseq_longformer.eval_summarization import rouge_lsum_text, rouge_scores

USER_DIR = os.path.dirname(fairseq_longformer.__file__)
CONFIGS = os.path.join(os.path.dirname(USER_DIR), "configs", "led")
RECORDS = [
    {"document": "the cat sat on the mat and looked at the dog for a long time", "summary": "cat on mat"},
    {"document": "a dog ran", "summary": "dog ran"},
    {"document": "rain fell all day on the town and the river rose over its banks", "summary": "flood"},
]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _translation_task(data):
    task = TranslationTask.setup_task(TranslationConfig(data=data, source_lang="source", target_lang="target",
                                                        dataset_impl=None, required_seq_len_multiple=1))
    task.load_dataset("train")
    return task


def test_whitespace_prep_writes_translation_binaries_with_bos_eos_and_counts_cuts(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", RECORDS)
    valid = _jsonl(tmp_path / "valid.jsonl", RECORDS[:1])
    out = tmp_path / "bin"
    stats = prep_summarization.main(["--train", train, "--valid", valid, "--output", str(out),
                                     "--tokenizer", "whitespace", "--max-source-positions", "8"])
    task = _translation_task(str(out))
    dictionary = task.source_dictionary
    dataset = task.dataset("train")
    for i, record in enumerate(RECORDS):
        source, target = dataset.src[i].tolist(), dataset.tgt[i].tolist()
        words = record["document"].split()[:6]  # 8 positions = <s> + 6 words + </s>
        assert source == [dictionary.bos(), *[dictionary.index(w) for w in words], dictionary.eos()]
        assert target == [dictionary.bos(), *[dictionary.index(w) for w in record["summary"].split()], dictionary.eos()]
    assert stats["splits"]["train"]["source"]["over_limit"] == 2  # two documents longer than 6 words were cut
    assert stats["splits"]["train"]["source"]["max"] == 17  # lengths before the cut, <s> and </s> included
    assert stats["splits"]["train"]["target"]["p50"] == 4
    assert json.loads((out / "prep.json").read_text())["tokenizer"] == "whitespace"
    assert (out / "dict.source.txt").read_text() == (out / "dict.target.txt").read_text()


def test_whitespace_tokens_in_a_model_dictionary(tmp_path):
    """--model-dir with --tokenizer whitespace: a model pretrained on whitespace tokens keeps its ids."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "dict.txt").write_text("".join(f"{w} 1\n" for w in ["dog", "cat", "the", "mat", "on", "ran"]))
    train = _jsonl(tmp_path / "train.jsonl", RECORDS)
    out = tmp_path / "bin"
    prep_summarization.main(["--train", train, "--valid", train, "--output", str(out), "--model-dir", str(model_dir),
                             "--tokenizer", "whitespace"])
    model_dictionary = Dictionary.load(str(model_dir / "dict.txt"))
    dataset = _translation_task(str(out)).dataset("train")
    assert dataset.src[1].tolist() == [0, model_dictionary.unk(), model_dictionary.index("dog"),
                                       model_dictionary.index("ran"), 2]  # "a" is not in the model's dictionary
    assert Dictionary.load(str(out / "dict.source.txt")).symbols == model_dictionary.symbols


def test_gpt2_prep_matches_fairseqs_bpe_and_decodes_back(tmp_path):
    model_dir = str(tmp_path / "model")
    bf.train_gpt2_bpe(model_dir)
    bf.write_bpe_dictionary(model_dir)
    from pydoc_data.topics import topics

    texts = [topics[k][:400] for k in sorted(topics)[:4]]
    records = [{"text": t, "abstract": t.split(".")[0]} for t in texts]
    train = _jsonl(tmp_path / "train.jsonl", records)
    out = tmp_path / "bin"
    prep_summarization.main(["--train", train, "--valid", train, "--output", str(out), "--model-dir", model_dir,
                             "--source-field", "text", "--target-field", "abstract", "--workers", "2"])
    from fairseq.data.encoders.gpt2_bpe import GPT2BPE

    bpe = GPT2BPE(Namespace(gpt2_encoder_json=os.path.join(model_dir, "encoder.json"),
                            gpt2_vocab_bpe=os.path.join(model_dir, "vocab.bpe")))
    model_dictionary = Dictionary.load(os.path.join(model_dir, "dict.txt"))
    dataset = _translation_task(str(out)).dataset("train")
    tokenizer = eval_summarization.data_tokenizer(str(out))
    for i, record in enumerate(records):
        expected = model_dictionary.encode_line(bpe.encode(record["text"]), append_eos=False).tolist()
        assert dataset.src[i].tolist() == [0, *expected, 2]
        assert tokenizer.decode(dataset.tgt[i][1:-1].tolist()) == record["abstract"]
    assert {"encoder.json", "vocab.bpe", "dict.txt"} <= set(os.listdir(out))


def test_bad_input_is_refused_clearly_and_leaves_nothing(tmp_path, capsys):
    good = _jsonl(tmp_path / "good.jsonl", RECORDS)
    out = tmp_path / "bin"
    bad = _jsonl(tmp_path / "bad.jsonl", [{"article": "x", "summary": "y"}])
    with pytest.raises(SystemExit, match="bad.jsonl:1: no field 'document' .*--source-field"):
        prep_summarization.main(["--train", bad, "--valid", good, "--output", str(out), "--tokenizer", "whitespace"])
    (tmp_path / "broken.jsonl").write_text('{"document": "a", "summary": "b"}\nnot json\n')
    with pytest.raises(SystemExit, match="broken.jsonl:2: not valid JSON"):
        prep_summarization.main(["--train", good, "--valid", str(tmp_path / "broken.jsonl"), "--output", str(out),
                                 "--tokenizer", "whitespace"])
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".bin")]
    with pytest.raises(SystemExit):  # argparse's usage error (exit 2) ...
        prep_summarization.main(["--train", good, "--valid", good, "--output", str(out)])
    assert "give --model-dir DIR (the model's tokenizer and dictionary) or --tokenizer whitespace" in \
        capsys.readouterr().err  # ... names both ways to tokenize
    with pytest.raises(SystemExit, match="--model-dir .* has no dict.txt"):
        prep_summarization.main(["--train", good, "--valid", good, "--output", str(out), "--model-dir", str(tmp_path)])
    prep_summarization.main(["--train", good, "--valid", good, "--output", str(out), "--tokenizer", "whitespace"])
    with pytest.raises(SystemExit, match="not empty; pass --overwrite"):
        prep_summarization.main(["--train", good, "--valid", good, "--output", str(out), "--tokenizer", "whitespace"])


def test_rouge_on_hand_computed_cases():
    # unigrams: 5 of 6 shared (the x2, cat, on, mat) -> P = R = F = 5/6; bigrams: 3 of 5 (the cat, on the,
    # the mat); LCS "the cat on the mat" = 5 of 6
    scores = rouge_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    assert scores["rouge1"] == pytest.approx(500 / 6)
    assert scores["rouge2"] == pytest.approx(60.0)
    assert scores["rougeL"] == pytest.approx(500 / 6)
    assert scores["rougeLsum"] == pytest.approx(500 / 6)
    # the mean over the split, and stemming (cats/cat, running/run)
    both = rouge_scores(["the cat sat on the mat", "cats running"], ["the cat is on the mat", "cat run"])
    assert both["rouge1"] == pytest.approx((500 / 6 + 100) / 2)
    # Lsum is summary-level: sentence order does not matter to it, but does to L
    # hyp "b c. a b." vs ref "a b. b c.": L = LCS("b c a b", "a b b c") = 2 of 4 -> 50; Lsum: each ref
    # sentence is covered by the union of LCS with the hyp sentences -> 4 of 4 -> 100
    swapped = rouge_scores(["b c. a b."], ["a b. b c."])
    assert swapped["rougeL"] == pytest.approx(50.0)
    assert swapped["rougeLsum"] == pytest.approx(100.0)
    assert rouge_lsum_text("One. Two!  Three? four") == "One.\nTwo!\nThree?\nfour"
    assert rouge_lsum_text("line one\n\nline two. still two") == "line one\nline two. still two"


# ------------------------------------------------------------------------------ end to end (slow)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny BART over a tiny GPT-2 BPE, converted to LED (256 source positions, window 16), and data."""
    root = tmp_path_factory.mktemp("led_pipeline")
    bart = str(root / "bart")
    bf.train_gpt2_bpe(bart)
    symbols = bf.write_bpe_dictionary(bart)
    lf.make_bart_dir(bart, symbols=symbols)
    led = str(root / "led")
    from fairseq_longformer.convert_bart import main as convert_main

    convert_main(["--input", bart, "--output", led, "--max-source-positions", "256", "--attention-window", "16"])
    assert {"encoder.json", "vocab.bpe", "dict.txt", "model.pt"} <= set(os.listdir(led))
    from pydoc_data.topics import topics

    records = [{"document": topics[k][:1500], "summary": topics[k].split(".")[0][:100]} for k in sorted(topics)[:24]]
    train = _jsonl(root / "train.jsonl", records[:20])
    valid = _jsonl(root / "valid.jsonl", records[20:])
    data = str(root / "bin")
    prep_summarization.main(["--train", train, "--valid", valid, "--output", data, "--model-dir", led,
                             "--max-source-positions", "256", "--max-target-positions", "32"])
    return root, led, data


def _fairseq_cli_in_process(caplog, module, parser, argv):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils

    caplog.set_level(logging.INFO)
    args = options.parse_args_and_arch(parser, list(argv))
    distributed_utils.call_main(convert_namespace_to_omegaconf(args), module.main)
    return caplog.text


@pytest.mark.slow
def test_fairseq_train_translation_then_eval_generate_and_hub_sample(pipeline, caplog, capsys):
    from fairseq import options
    from fairseq_cli import generate, train

    root, led, data = pipeline
    save_dir = str(root / "ckpt")
    t = lf.TINY
    model_args = [
        "--arch", "longformer_bart", "--encoder-layers", str(t["layers"]), "--decoder-layers", str(t["layers"]),
        "--encoder-embed-dim", str(t["embed_dim"]), "--decoder-embed-dim", str(t["embed_dim"]),
        "--encoder-ffn-embed-dim", str(t["ffn_dim"]), "--decoder-ffn-embed-dim", str(t["ffn_dim"]),
        "--encoder-attention-heads", str(t["heads"]), "--decoder-attention-heads", str(t["heads"]),
        "--max-source-positions", "256", "--max-target-positions", str(t["max_positions"]),
        "--attention-window", "16",
    ]
    log = _fairseq_cli_in_process(caplog, train, options.get_training_parser(), [
        data, "--user-dir", USER_DIR, "--task", "translation", *model_args,
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--restore-file", os.path.join(led, "model.pt"),
        "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler",
        "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "4", "--required-batch-size-multiple", "1",
        "--max-update", "3", "--cpu",
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
        "--num-workers", "0", "--checkpoint-activations",
    ])
    assert "Loaded checkpoint" in log and "led/model.pt" in log  # the converted weights, not random ones
    checkpoint = os.path.join(save_dir, "checkpoint_last.pt")
    state = torch.load(checkpoint, weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 3
    assert state["cfg"]["model"].arch == "longformer_bart"
    converted = torch.load(os.path.join(led, "model.pt"), weights_only=False)["model"]
    trained = state["model"]
    assert not torch.equal(trained["encoder.layers.0.self_attn.q_global.weight"],
                           converted["encoder.layers.0.self_attn.q_global.weight"])  # <s> was global in training

    output = str(root / "rouge.json")
    result = eval_summarization.main(["--data", data, "--split", "valid", "--path", checkpoint, "--beam", "2",
                                      "--max-len-b", "12", "--output", output, "--cpu"])
    written = json.loads(open(output).read())
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert 0.0 <= written[name] <= 100.0 and written[name] == result[name]
    lines = [json.loads(line) for line in open(written["hypotheses"])]
    assert [line["id"] for line in lines] == [0, 1, 2, 3]
    assert all(line["reference"] for line in lines)

    # fairseq-generate (left-padded sources, fairseq's own printing) gives the same hypotheses
    capsys.readouterr()
    _fairseq_cli_in_process(caplog, generate, options.get_generation_parser(), [
        data, "--user-dir", USER_DIR, "--task", "translation", "--path", checkpoint, "--gen-subset", "valid",
        "--beam", "2", "--max-len-b", "12", "--batch-size", "8", "--required-batch-size-multiple", "1", "--cpu",
        "--num-workers", "0",
    ])
    printed = capsys.readouterr().out
    dictionary = Dictionary.load(os.path.join(data, "dict.target.txt"))
    tokenizer = eval_summarization.data_tokenizer(data)
    hypotheses = {int(line.split("\t")[0][2:]): line.split("\t")[2] for line in printed.splitlines()
                  if line.startswith("H-")}
    assert len(hypotheses) == 4
    for line in lines:
        ids = [dictionary.index(s) for s in hypotheses[line["id"]].split()]
        assert tokenizer.decode(ids) == line["hypothesis"]

    # fairseq-interactive on one source typed as dictionary symbols (<s> typed, </s> appended by fairseq)
    from fairseq_cli import interactive

    task = _translation_task(data)
    task.load_dataset("valid")
    typed = root / "typed.txt"
    typed.write_text(" ".join(task.source_dictionary[i] for i in task.dataset("valid").src[0][:-1].tolist()) + "\n")
    capsys.readouterr()
    _fairseq_cli_in_process(caplog, interactive, options.get_interactive_generation_parser(), [
        data, "--user-dir", USER_DIR, "--task", "translation", "--path", checkpoint, "--input", str(typed),
        "--beam", "2", "--max-len-b", "12", "--cpu",
    ])
    typed_hypothesis = [line.split("\t")[2] for line in capsys.readouterr().out.splitlines() if line.startswith("H-")]
    assert typed_hypothesis == [hypotheses[0]]

    # the hub's sample() on the finetuned checkpoint (BPE files from the converted directory)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(os.path.join(led, name), os.path.join(save_dir, name))
    from fairseq_longformer import LongformerBartModel

    hub = LongformerBartModel.from_pretrained(save_dir, "checkpoint_last.pt", data_name_or_path=data, bpe="gpt2")
    summary = hub.sample(["The for statement iterates over the items of any sequence."], beam=2, max_len_b=8)
    assert isinstance(summary[0], str)


def test_paper_recipe_configs_hold_their_numbers():
    from omegaconf import OmegaConf

    for name in ("base", "large"):
        cfg = OmegaConf.load(os.path.join(CONFIGS, f"{name}.yaml"))
        assert cfg.model._name == f"longformer_bart_{name}" and cfg.task._name == "translation"
        assert cfg.model.max_source_positions == cfg.task.max_source_positions == 16384
        assert cfg.model.attention_window == "1024" and cfg.model.source_global_attention == "cls"
        assert cfg.common.fp16 and cfg.model.checkpoint_activations
        assert cfg.optimization.lr == [3e-05] and cfg.lr_scheduler.warmup_updates == 1000
        # 16 documents per update on 8 GPUs; 5 epochs of arXiv's 203,037 training documents
        assert cfg.dataset.batch_size * 8 * cfg.optimization.update_freq[0] == 16
        assert cfg.lr_scheduler.total_num_update == -(-5 * 203037 // 16)


# Only the model size and lengths (and for base the GPU settings) are overridden: every other key of the
# YAML (task, criterion, optimizer, scheduler, global attention, activation checkpointing) runs as written.
HYDRA_OVERRIDES = {"demo": [], "base": ["common.fp16=false", "common.cpu=true", "optimization.update_freq=[1]"]}


@pytest.mark.slow
@pytest.mark.parametrize("config", ["demo", "base"])
def test_config_runs_with_fairseq_hydra_train(pipeline, config):
    root, led, data = pipeline
    t = lf.TINY
    values = {**rf.short_run_values(data, f"{root}/hydra_{config}"), "dataset.batch_size": 4,
              **rf.tiny_restore_values(led, "16", t, ("encoder", "decoder")),
              "task.max_source_positions": 256, "task.max_target_positions": t["max_positions"],
              "model.max_source_positions": 256, "model.max_target_positions": t["max_positions"]}
    out = rf.run_hydra_train(CONFIGS, config, values, HYDRA_OVERRIDES[config], cwd=root)
    assert "Loaded checkpoint" in out and "num_updates: 2 >= max_update: 2" in out
