"""A tiny BART built and saved by fairseq itself, converted to LED, and tiny summarization data (no downloads).

``make_bart_dir(path, legacy=...)`` writes ``model.pt`` + ``dict.txt`` the way fairseq does:
``legacy=False`` through fairseq's ``Trainer.save_checkpoint`` (current layout, ``cfg``);
``legacy=True`` like the released BART checkpoints (an ``args`` Namespace, no
``decoder.output_projection.weight``, which fairseq's upgrade adds from the shared embeddings).
"""

from __future__ import annotations

import os

import torch

import roberta_fixtures as rf
from fairseq import options, tasks

TINY = dict(layers=2, embed_dim=32, ffn_dim=64, heads=4, max_positions=32)


def bart_args(data_dir: str, **tiny):
    t = {**TINY, **tiny}
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, [
        data_dir, "--task", "denoising", "--criterion", "cross_entropy", "--arch", "bart_base",
        "--encoder-layers", str(t["layers"]), "--decoder-layers", str(t["layers"]),
        "--encoder-embed-dim", str(t["embed_dim"]), "--decoder-embed-dim", str(t["embed_dim"]),
        "--encoder-ffn-embed-dim", str(t["ffn_dim"]), "--decoder-ffn-embed-dim", str(t["ffn_dim"]),
        "--encoder-attention-heads", str(t["heads"]), "--decoder-attention-heads", str(t["heads"]),
        "--max-source-positions", str(t["max_positions"]), "--max-target-positions", str(t["max_positions"]),
        "--tokens-per-sample", str(t["max_positions"]),
        "--optimizer", "adam", "--lr", "1e-4", "--max-tokens", "512", "--cpu",
        "--dropout", "0", "--attention-dropout", "0",
    ])


def make_bart_dir(directory: str, legacy: bool = False, seed: int = 0, symbols=None, **tiny) -> str:
    """Build a tiny BART with fairseq, give every weight a distinct random value, save it."""
    rf.write_dictionary(directory, symbols=symbols)
    args = bart_args(directory, **tiny)
    task = tasks.setup_task(args)
    model = task.build_model(args)
    rf.fill_distinct_random(model, seed)
    padding = task.source_dictionary.pad()
    with torch.no_grad():
        for part in (model.encoder, model.decoder):
            part.embed_positions.weight[padding].zero_()
        model.encoder.embed_tokens.weight[padding].zero_()
    path = os.path.join(directory, "model.pt")
    if legacy:
        torch.save(_legacy_checkpoint(args, model.state_dict()), path)
    else:
        rf.save_like_fairseq_train(path, args, task, model)
    return directory


def _legacy_checkpoint(args, state: dict) -> dict:
    """The layout of the 2019 released BART checkpoints."""
    return {
        "args": args,
        "model": {k: v for k, v in state.items() if k != "decoder.output_projection.weight"},
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }


def make_led_dir(directory: str, max_source_positions: int = 128, attention_window: str = "64",
                 seed: int = 0, symbols=None, **tiny) -> str:
    """A tiny LED directory as ``longformer-convert-bart`` writes it (the BART source is removed)."""
    import shutil

    from fairseq_longformer.convert_bart import LedConversionOptions, convert

    source = directory.rstrip("/") + "_bart_source"
    make_bart_dir(source, seed=seed, symbols=symbols, **tiny)
    convert(source, directory, LedConversionOptions(max_source_positions, attention_window))
    shutil.rmtree(source)
    return directory
