"""Tokenizers: GPT-2 BPE exactly as RoBERTa, or a sentencepiece model, behind one small interface
(a spec with ``check``, ``fingerprint``, ``load``, ``write_dict``; an encoder with ``encode``).

Both write a document as RoBERTa's ``multiprocessing_bpe_encoder.py`` does: each paragraph (stripped
line) becomes one line of space-separated integer ids; fairseq's ``dict.txt`` maps those id strings to
model indices. A tokenizer is described by a small picklable spec (paths only) and loaded once per worker.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# fairseq's GPT-2 encoder cache grows with every distinct pre-token; clearing it at this size keeps
# worker memory flat on a corpus of any size (about 25-50 MB per worker at most) while keeping the hit
# rate of frequent words.
BPE_CACHE_ENTRIES = 200_000


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_fairseq_dict_symbols(path: Path) -> list[str]:
    """Symbols of a fairseq ``dict.txt`` (``symbol count [#fairseq:overwrite]`` per line), in order."""
    symbols = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.endswith(" #fairseq:overwrite"):
                line = line[: -len(" #fairseq:overwrite")]
            symbol, sep, count = line.rpartition(" ")
            if not sep or not count.lstrip("-").isdigit():
                raise ValueError(
                    f"{path}:{lineno}: not a fairseq dict.txt line ('<symbol> <count>' expected), got {line[:60]!r}"
                )
            symbols.append(symbol)
    return symbols


def _load_fairseq_gpt2_module():
    """fairseq's own ``gpt2_bpe_utils`` loaded as a standalone module.

    ``import fairseq.data.encoders.gpt2_bpe_utils`` would first run ``fairseq/__init__`` (torch and all
    tasks: ~3 s and ~330 MB per worker process). The encoder module needs only json and regex, so it is
    loaded from fairseq's installed file directly: same code, without the weight.
    """
    name = "_fairseq_gpt2_bpe_utils"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("fairseq")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("fairseq is not installed; `pip install ve-fairseq` (a project dependency)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "encoders" / "gpt2_bpe_utils.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


@dataclass(frozen=True)
class Gpt2BpeSpec:
    """RoBERTa's GPT-2 BPE: ``encoder.json``, ``vocab.bpe`` and RoBERTa's fairseq ``dict.txt``."""

    encoder_json: Path
    vocab_bpe: Path
    dict_txt: Path
    cache_entries: int = BPE_CACHE_ENTRIES  # speed/memory knob only; not part of the fingerprint

    name = "gpt2"

    def check(self) -> None:
        """Refuse swapped or wrong files early, with the fix in the message."""
        for label, path in (("--gpt2-encoder-json", self.encoder_json), ("--gpt2-vocab-bpe", self.vocab_bpe),
                            ("--dict", self.dict_txt)):
            if not Path(path).is_file():
                raise ValueError(f"{label} {path} is not a file")
        try:
            with open(self.encoder_json, encoding="utf-8") as f:
                encoder = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"--gpt2-encoder-json {self.encoder_json} is not GPT-2's encoder.json ({err})") from None
        if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
            raise ValueError(f"--gpt2-encoder-json {self.encoder_json}: expected a JSON object token -> id")
        with open(self.vocab_bpe, encoding="utf-8") as f:
            first = f.readline()
        if first.lstrip().startswith("{"):
            raise ValueError(f"--gpt2-vocab-bpe {self.vocab_bpe} looks like JSON; did you swap it with encoder.json?")
        symbols = read_fairseq_dict_symbols(self.dict_txt)
        ids = set(encoder.values())
        known = sum(1 for s in symbols if s.isdigit() and int(s) in ids)
        if known < 0.5 * len(symbols):
            raise ValueError(
                f"--dict {self.dict_txt}: only {known} of {len(symbols)} symbols are GPT-2 ids from "
                f"{self.encoder_json}; give RoBERTa's dict.txt (its symbols are GPT-2 ids such as '13')"
            )

    def fingerprint(self) -> dict:
        return {"tokenizer": self.name, **{k: file_sha256(Path(getattr(self, k)))
                                           for k in ("encoder_json", "vocab_bpe", "dict_txt")}}

    def load(self, max_line_tokens: int) -> "Gpt2BpeEncoder":
        return Gpt2BpeEncoder(self, max_line_tokens)

    def write_dict(self, dest: Path) -> Path:
        """RoBERTa's dict.txt is used unchanged, so a converted RoBERTa trains on the output directly."""
        shutil.copyfile(self.dict_txt, dest)
        return dest


def id_lines(ids: list, max_line_tokens: int) -> list[str]:
    """A paragraph's ids as output lines: one line, or near-equal lines of at most ``max_line_tokens``.

    fairseq's ``complete``/``complete_doc`` blocks never split a line, so a line longer than the
    model's block (a one-line story of 8K tokens) would be an invalid, skipped sample.
    """
    n = len(ids)
    if n <= max_line_tokens:
        return [" ".join(map(str, ids))]
    pieces = -(-n // max_line_tokens)
    bounds = [round(k * n / pieces) for k in range(pieces + 1)]
    return [" ".join(map(str, ids[a:b])) for a, b in zip(bounds, bounds[1:])]


class Gpt2BpeEncoder:
    def __init__(self, spec: Gpt2BpeSpec, max_line_tokens: int):
        self.cache_entries = spec.cache_entries
        self.max_line_tokens = max_line_tokens
        self.bpe = _load_fairseq_gpt2_module().get_encoder(str(spec.encoder_json), str(spec.vocab_bpe))
        self.known_ids = frozenset(int(s) for s in read_fairseq_dict_symbols(spec.dict_txt) if s.isdigit())

    def encode(self, paragraphs: list[str]) -> tuple[int, list[str], int]:
        """-> (tokens, one id line per paragraph, tokens missing from dict.txt i.e. future <unk>s)."""
        lines, n_tokens, n_unk = [], 0, 0
        known = self.known_ids
        for paragraph in paragraphs:
            ids = self.bpe.encode(paragraph)
            n_tokens += len(ids)
            n_unk += sum(1 for i in ids if i not in known)
            lines.extend(id_lines(ids, self.max_line_tokens))
        if len(self.bpe.cache) > self.cache_entries:
            self.bpe.cache.clear()
        return n_tokens, lines, n_unk


@dataclass(frozen=True)
class SentencePieceSpec:
    """A sentencepiece model; ids are written as strings and ``dict.txt`` is made from the model."""

    model: Path

    name = "spm"

    def check(self) -> None:
        if not Path(self.model).is_file():
            raise ValueError(f"--spm-model {self.model} is not a file")
        import sentencepiece as spm

        try:
            spm.SentencePieceProcessor(model_file=str(self.model))
        except (RuntimeError, OSError) as err:
            raise ValueError(f"--spm-model {self.model} is not a sentencepiece model ({err})") from None

    def fingerprint(self) -> dict:
        return {"tokenizer": self.name, "model": file_sha256(Path(self.model))}

    def load(self, max_line_tokens: int) -> "SentencePieceEncoder":
        return SentencePieceEncoder(self, max_line_tokens)

    def write_dict(self, dest: Path) -> Path:
        """Every piece the model can emit, as its id; the unknown piece is written as fairseq's ``<unk>``."""
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(self.model))
        with open(dest, "w", encoding="utf-8") as f:
            for i in range(sp.get_piece_size()):
                if not (sp.is_control(i) or sp.is_unknown(i)):
                    f.write(f"{i} 1\n")
        return dest


class SentencePieceEncoder:
    def __init__(self, spec: SentencePieceSpec, max_line_tokens: int):
        import sentencepiece as spm

        self.max_line_tokens = max_line_tokens
        self.sp = spm.SentencePieceProcessor(model_file=str(spec.model))
        self.unk = self.sp.unk_id()

    def encode(self, paragraphs: list[str]) -> tuple[int, list[str], int]:
        encoded = self.sp.encode(paragraphs, out_type=int)
        n_tokens = sum(len(ids) for ids in encoded)
        n_unk = sum(1 for ids in encoded for i in ids if i == self.unk)
        lines = [line for ids in encoded
                 for line in id_lines(["<unk>" if i == self.unk else i for i in ids], self.max_line_tokens)]
        return n_tokens, lines, n_unk


def train_sentencepiece(sample_file: Path, model_prefix: Path, vocab_size: int, model_type: str,
                        threads: int) -> Path:
    """Train a sentencepiece model on the sampled paragraphs; byte fallback so no text becomes <unk>."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        input=str(sample_file),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=0.9995,
        byte_fallback=True,
        bos_id=-1,
        eos_id=-1,  # fairseq adds its own </s>; sentencepiece control ids would never be emitted anyway
        pad_id=-1,
        unk_id=0,
        num_threads=threads,
        shuffle_input_sentence=False,  # the sample is already random and seeded; keep training reproducible
        minloglevel=2,
    )
    return Path(str(model_prefix) + ".model")


# Worker side: one encoder per process, set by the pool initializer (or directly when running in-process).
_WORKER_ENCODER = None


def init_worker(spec, max_line_tokens: int) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = spec.load(max_line_tokens)


def encode_in_worker(paragraphs: list[str]) -> tuple[int, list[str], int]:
    return _WORKER_ENCODER.encode(paragraphs)
