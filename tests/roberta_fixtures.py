"""A tiny RoBERTa built and saved by fairseq itself, and tiny masked-LM data (no downloads).

``make_roberta_dir(path, legacy=...)`` writes ``model.pt`` + ``dict.txt`` the way fairseq does:
``legacy=False`` through fairseq's ``Trainer.save_checkpoint`` (current key names, ``cfg``);
``legacy=True`` like the released RoBERTa checkpoints (``args`` Namespace, ``decoder.*`` keys,
``emb_layer_norm``, no ``version`` buffer).

Also what several test files share: hydra values for short runs of the shipped configs, the checks every
converter's output must pass (``assert_*``), and the check that a failed tool run leaves nothing behind.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import fairseq_longformer  # importing it registers the plugin with fairseq
from fairseq import options, tasks
from fairseq.data import Dictionary, indexed_dataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer

VOCAB = 60
TINY = dict(layers=2, embed_dim=32, ffn_dim=64, heads=4, max_positions=32)


def write_dictionary(directory: str, vocab: int = VOCAB, symbols=None) -> Dictionary:
    os.makedirs(directory, exist_ok=True)
    symbols = symbols or [f"w{i}" for i in range(vocab)]
    with open(os.path.join(directory, "dict.txt"), "w") as f:
        for i, symbol in enumerate(symbols):
            f.write(f"{symbol} {1000 - i}\n")
    return Dictionary.load(os.path.join(directory, "dict.txt"))


def write_gpt2_bpe_files(directory: str, chars: str = "abcdefghijklmnopqrstuvwxyz") -> list:
    """A miniature GPT-2 BPE (``encoder.json``, ``vocab.bpe`` with no merges: one token per character).

    Returns the dictionary symbols (GPT-2 token ids as strings, as in RoBERTa's dict.txt).
    """
    from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

    byte_to_unit = bytes_to_unicode()
    units = sorted({byte_to_unit[ord(c)] for c in chars + " "})
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "encoder.json"), "w") as f:
        json.dump({unit: i for i, unit in enumerate(units)}, f)
    with open(os.path.join(directory, "vocab.bpe"), "w") as f:
        f.write("#version: 0.2\n")
    return [str(i) for i in range(len(units))]


def write_split(directory: str, split: str, dictionary: Dictionary, n_lines: int, seed: int) -> None:
    """fairseq ``.bin``/``.idx`` of lines of words drawn from a skewed (learnable) distribution."""
    rng = np.random.default_rng(seed)
    words = len(dictionary) - dictionary.nspecial
    probs = 1.0 / np.arange(1, words + 1)
    probs /= probs.sum()
    prefix = os.path.join(directory, split)
    builder = indexed_dataset.make_builder(prefix + ".bin", "mmap", vocab_size=len(dictionary))
    for _ in range(n_lines):
        ids = rng.choice(words, size=int(rng.integers(8, 40)), p=probs) + dictionary.nspecial
        builder.add_item(torch.tensor(list(ids) + [dictionary.eos()], dtype=torch.int64))
    builder.finalize(prefix + ".idx")


def write_data(directory: str, vocab: int = VOCAB, train_lines: int = 200, valid_lines: int = 40) -> str:
    dictionary = write_dictionary(directory, vocab)
    write_split(directory, "train", dictionary, train_lines, seed=1)
    write_split(directory, "valid", dictionary, valid_lines, seed=2)
    return directory


def roberta_args(data_dir: str, arch: str = "roberta", **tiny):
    t = {**TINY, **tiny}
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, [
        data_dir, "--task", "masked_lm", "--criterion", "masked_lm", "--arch", arch,
        "--encoder-layers", str(t["layers"]), "--encoder-embed-dim", str(t["embed_dim"]),
        "--encoder-ffn-embed-dim", str(t["ffn_dim"]), "--encoder-attention-heads", str(t["heads"]),
        "--max-positions", str(t["max_positions"]), "--tokens-per-sample", str(t["max_positions"]),
        "--optimizer", "adam", "--lr", "1e-4", "--max-tokens", "512", "--cpu",
        "--dropout", "0", "--attention-dropout", "0",
    ])


def make_roberta_dir(directory: str, legacy: bool = False, seed: int = 0, symbols=None, **tiny) -> str:
    """Build a tiny RoBERTa with fairseq, give every weight a distinct random value, save it."""
    write_dictionary(directory, symbols=symbols)
    args = roberta_args(directory, **tiny)
    task = tasks.setup_task(args)
    model = task.build_model(args)
    fill_distinct_random(model, seed)
    padding = task.source_dictionary.pad()
    with torch.no_grad():
        model.encoder.sentence_encoder.embed_tokens.weight[padding].zero_()
        model.encoder.sentence_encoder.embed_positions.weight[padding].zero_()
    path = os.path.join(directory, "model.pt")
    if legacy:
        torch.save(_legacy_checkpoint(args, model.state_dict()), path)
    else:
        save_like_fairseq_train(path, args, task, model)
    return directory


def fill_distinct_random(model, seed: int) -> None:
    """Every weight a distinct random value (layer norms around 1), so that no mix-up goes unseen."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.3 if "norm" in name else 0.1))
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)


def save_like_fairseq_train(path: str, args, task, model) -> None:
    """A checkpoint written by fairseq's own ``Trainer.save_checkpoint`` (current layout, ``cfg``)."""
    cfg = convert_namespace_to_omegaconf(args)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does
    trainer.save_checkpoint(path, {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "version": 2}})


def _legacy_checkpoint(args, state: dict) -> dict:
    """The layout of the 2019 released RoBERTa checkpoints."""
    renamed = {}
    for key, value in state.items():
        if key.endswith("sentence_encoder.version"):
            continue
        key = "decoder" + key[len("encoder"):] if key.startswith("encoder.") else key
        renamed[key.replace(".layernorm_embedding.", ".emb_layer_norm.")] = value
    return {
        "args": args,
        "model": renamed,
        "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }


def run_hydra_train(config_dir: str, config: str, values: dict, extra: list, cwd) -> str:
    """``fairseq-hydra-train`` on one shipped config in a subprocess (one thread); returns its output.

    ``values`` become ``++key=value`` overrides (set whether or not the YAML has the key). Checks that it
    succeeded and that hydra left no ``outputs/`` folder (the configs' ``hydra.run.dir`` is ``.``).
    """
    import subprocess
    import sys

    overrides = [f"++{k}={v}" for k, v in values.items()]
    cmd = [sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", config_dir, "--config-name", config,
           *overrides, *extra]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert not os.path.exists(os.path.join(cwd, "outputs"))
    return out


def short_run_values(data: str, save_dir: str) -> dict:
    """hydra values every shipped-config run sets: the plugin, the data, where to save, 2 updates, no workers."""
    return {"common.user_dir": os.path.dirname(fairseq_longformer.__file__), "task.data": data,
            "checkpoint.save_dir": save_dir, "optimization.max_update": 2, "dataset.num_workers": 0}


def tiny_restore_values(model_dir: str, window: str, tiny: dict = TINY, parts=("encoder",)) -> dict:
    """hydra values that start a shipped config from the tiny ``model_dir/model.pt``: its sizes and window."""
    sizes = (("layers", "layers"), ("embed_dim", "embed_dim"), ("ffn_embed_dim", "ffn_dim"),
             ("attention_heads", "heads"))
    return {"checkpoint.restore_file": f"{model_dir}/model.pt", "model.attention_window": f"'{window}'",
            **{f"model.{part}_{key}": tiny[size] for part in parts for key, size in sizes}}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_longformer(directory: str, **overrides):
    """The converted/trained Longformer model in ``directory/model.pt`` (fairseq's own loader)."""
    from fairseq import checkpoint_utils

    models, _ = checkpoint_utils.load_model_ensemble(
        [os.path.join(directory, "model.pt")], arg_overrides={"data": directory, **overrides}
    )
    return models[0]


def convert_both_layouts(root, make_source, convert, options, prefix: str) -> dict:
    """``{"current"|"legacy": (source_dir, converted_dir)}``: a tiny source in each checkpoint layout, converted."""
    out = {}
    for legacy in (False, True):
        name = "legacy" if legacy else "current"
        src = make_source(str(root / f"src_{name}"), legacy=legacy, seed=int(legacy))
        convert(src, str(root / f"{prefix}_{name}"), options)
        out[name] = (src, str(root / f"{prefix}_{name}"))
    return out


def load_states(*directories: str) -> list:
    """The weights (``model`` of ``model.pt``) of each directory's checkpoint."""
    return [torch.load(os.path.join(d, "model.pt"), weights_only=True)["model"] for d in directories]


def assert_positions_tiled(old, new, positions: int, source_positions: int) -> None:
    """Converted position table: 2 padding-offset rows kept, then the source's rows copied again and again."""
    assert new.shape == (positions + 2, old.shape[1])
    assert torch.equal(new[:2], old[:2])
    for copy in range(positions // source_positions):
        start = 2 + copy * source_positions
        assert torch.equal(new[start:start + source_positions], old[2:])


def assert_global_projections_untied_copies(attention) -> None:
    """Qg/Kg/Vg equal Q/K/V but own their storage: changing Qg leaves Q as it was."""
    for local, global_ in (("q_proj", "q_global"), ("k_proj", "k_global"), ("v_proj", "v_global")):
        a, b = getattr(attention, local).weight, getattr(attention, global_).weight
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    with torch.no_grad():
        attention.q_global.weight.add_(1.0)
    assert not torch.equal(attention.q_proj.weight, attention.q_global.weight)


def assert_written_whole_and_not_overwritten(convert, options, src: str, out: str) -> None:
    """A converter's ``out`` holds only ``dict.txt`` + ``model.pt`` (no temporaries) and a second run is refused."""
    from fairseq_longformer.conversion import ConversionError

    assert sorted(os.listdir(out)) == ["dict.txt", "model.pt"]  # no temporary files left behind
    with pytest.raises(ConversionError, match="exists; pass --overwrite"):
        convert(src, out, options)


def assert_refuses_bad_sizes_and_missing_model(convert, options_type, src: str, tmp_path,
                                               too_small: str, not_found: str) -> str:
    """A converter refuses too few positions, an odd window, a window list of the wrong length, no model.pt.

    Each is asked to write ``tmp_path/out`` (returned, for the caller's further refusals); ``tmp_path`` is
    the input without a model.pt. ``too_small`` and ``not_found`` are what the first and last messages match.
    """
    from fairseq_longformer.conversion import ConversionError

    out, empty_dir = str(tmp_path / "out"), str(tmp_path)
    with pytest.raises(ConversionError, match=too_small):
        convert(src, out, options_type(16, "8"))
    with pytest.raises(ConversionError, match="even"):
        convert(src, out, options_type(64, "63"))
    with pytest.raises(ConversionError, match="3 values but the model has 2 layers"):
        convert(src, out, options_type(64, "8,8,8"))
    with pytest.raises(ConversionError, match=not_found):
        convert(empty_dir, out, options_type())
    return out


def assert_fails_leaving_nothing(run, error, message, out: str) -> None:
    """``run()`` raises ``error`` (matching ``message``) and leaves neither ``out`` nor a staging folder beside it."""
    with pytest.raises(error, match=message):
        run()
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(os.path.dirname(out)) if ".tmp-" in p]


def ddp_worker(rank: int, world_size: int, port: int, model_dir: str, results):
    """One rank of 2-process CPU DistributedDataParallel MLM steps without global tokens.

    Runs twice with ``find_unused_parameters=False``: as shipped, then (the control) with the
    zero-valued term that keeps Qg/Kg/Vg in the graph switched off. Puts ``(rank, run, outcome)``.
    """
    import torch.distributed as dist
    import torch.nn.functional as F

    from fairseq_longformer.modules.longformer_self_attention import LongformerSelfAttention

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for run in ("shipped", "control"):
            if run == "control":
                LongformerSelfAttention._keep_global_projections_in_graph = lambda self, out: out
            model = load_longformer(model_dir).train()
            ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
            generator = torch.Generator().manual_seed(rank)
            try:
                for _ in range(2):  # DDP reports unused parameters at the start of the second step
                    tokens = torch.randint(4, VOCAB, (2, 40), generator=generator)
                    logits, _ = ddp(tokens)
                    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1)).backward()
                grad = model.encoder.sentence_encoder.layers[0].self_attn.q_global.weight.grad
                results.put((rank, run, "ok", None if grad is None else float(grad.abs().max())))
            except RuntimeError as err:
                results.put((rank, run, "error", str(err)[:300]))
    finally:
        dist.destroy_process_group()
