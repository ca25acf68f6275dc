"""A tiny byte-level BPE in GPT-2's file format, and tiny Longformer directories that use it (no downloads).

``train_gpt2_bpe(dir)`` trains a byte-level BPE with the ``tokenizers`` package on the Python docs shipped
with every CPython (``pydoc_data.topics``) and writes GPT-2's ``encoder.json``/``vocab.bpe``. fairseq's
GPT-2 encoder reads those files exactly as it reads GPT-2's own. ``write_bpe_dictionary`` writes a RoBERTa
style ``dict.txt`` (GPT-2 ids as symbols, by falling frequency) that can leave some BPE tokens out, so
texts with pieces fairseq maps to ``<unk>`` can be tested. ``make_bpe_longformer_dir`` builds a tiny
``longformer_roberta`` directory (``model.pt``, ``dict.txt``, ``encoder.json``, ``vocab.bpe``) the way a user
gets one: a fairseq RoBERTa converted with ``longformer-convert-roberta``.
"""

from __future__ import annotations

import json
import os
import shutil

import roberta_fixtures as rf
from fairseq_longformer.convert_roberta import ConversionOptions, convert

BPE_VOCAB = 600  # 256 byte symbols + merges


def corpus_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def train_gpt2_bpe(directory: str, vocab_size: int = BPE_VOCAB) -> dict:
    """Write ``encoder.json`` + ``vocab.bpe``; returns the encoder (token -> GPT-2 id)."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(corpus_texts(), vocab_size=vocab_size, min_frequency=2, show_progress=False)
    os.makedirs(directory, exist_ok=True)
    tokenizer.save_model(directory)  # vocab.json / merges.txt are GPT-2's encoder.json / vocab.bpe
    os.replace(os.path.join(directory, "vocab.json"), os.path.join(directory, "encoder.json"))
    os.replace(os.path.join(directory, "merges.txt"), os.path.join(directory, "vocab.bpe"))
    with open(os.path.join(directory, "encoder.json"), encoding="utf-8") as f:
        return json.load(f)


def gpt2_encoder(directory: str):
    """fairseq's own GPT-2 BPE encoder over the directory's files: the reference tokenizer."""
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    return get_encoder(os.path.join(directory, "encoder.json"), os.path.join(directory, "vocab.bpe"))


def write_bpe_dictionary(directory: str, leave_out: int = 0, every_token: bool = False) -> list[str]:
    """RoBERTa's ``dict.txt`` layout: GPT-2 ids as symbols, most frequent first, with counts.

    Frequencies come from encoding the training texts with fairseq's encoder. The ``leave_out`` rarest
    ids that occur are dropped (fairseq then gives ``<unk>`` for them), and ids that never occur are
    left out, as a dictionary counted from a corpus leaves them out; ``every_token`` lists those too
    (count 0, last), as RoBERTa's released dictionary lists every GPT-2 token. Returns the symbols in
    dictionary order.
    """
    from collections import Counter

    encoder = gpt2_encoder(directory)
    counts = Counter(i for text in corpus_texts() for i in encoder.encode(text))
    ranked = [i for i, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    kept = ranked[: len(ranked) - leave_out]
    if every_token:
        kept += sorted(set(encoder.encoder.values()) - set(counts))
    with open(os.path.join(directory, "dict.txt"), "w", encoding="utf-8") as f:
        for i in kept:
            f.write(f"{i} {counts[i]}\n")
    return [str(i) for i in kept]


def make_bpe_roberta_dir(directory: str, leave_out: int = 0, seed: int = 0, every_token: bool = False,
                         **tiny) -> str:
    """A tiny fairseq RoBERTa over the tiny BPE (``model.pt``, ``dict.txt``, ``encoder.json``, ``vocab.bpe``)."""
    train_gpt2_bpe(directory)
    symbols = write_bpe_dictionary(directory, leave_out=leave_out, every_token=every_token)
    rf.make_roberta_dir(directory, seed=seed, symbols=symbols, **tiny)
    return directory


def make_bpe_longformer_dir(directory: str, max_positions: int = 128, attention_window: str = "16",
                            leave_out: int = 0, seed: int = 0, every_token: bool = False, **tiny) -> str:
    """A tiny ``longformer_roberta`` directory as ``longformer-convert-roberta`` writes it."""
    source = directory.rstrip("/") + "_roberta_source"
    make_bpe_roberta_dir(source, leave_out=leave_out, seed=seed, every_token=every_token, **tiny)
    convert(source, directory, ConversionOptions(max_positions=max_positions, attention_window=attention_window))
    shutil.rmtree(source)
    return directory
