"""Tokenizer files both ways: fairseq's GPT-2 BPE + dictionary <-> HF's byte-level BPE in fairseq's index order.

fairseq encodes text in two steps: GPT-2's BPE (``encoder.json`` + ``vocab.bpe``) gives GPT-2 ids, and
``dict.txt`` (GPT-2 ids as symbols) turns them into model ids, ``<unk>`` (3) for ids it lacks. HF does both in
one BPE whose ``vocab.json`` maps each BPE token straight to the model id, so ``vocab.json`` is
``{token(i): i}`` over fairseq's indices: the 4 specials, then ``dict.txt``'s symbols, then ``<mask>``.

BPE tokens missing from ``dict.txt`` cannot map to 3 in HF: its BPE looks merges up by token *id*, so tokens
sharing id 3 merge as if they were one another (a missing byte next to a letter gets merged like a different
missing byte), and ``save_pretrained`` keeps one token per id, so a saved copy no longer loads. They get
ids of their own after fairseq's (``N, N+1, ...`` for a dictionary of ``N`` entries), which the exporter
backs with copies of the ``<unk>`` embedding row and output bias: the model sees ``<unk>``, HF's ids
differ from fairseq's only where fairseq gives ``<unk>`` for such a piece, and every hidden state and the
first ``N`` logits are the same. Dictionaries that hold every BPE token (RoBERTa's) need none.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from data_prep.atomic import write_json_atomic, write_text_atomic

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's Dictionary: bos 0, pad 1, eos 2, unk 3
UNK = 3
MASK = "<mask>"
BPE_HEADER = "#version: 0.2"


class VocabularyError(ValueError):
    """The tokenizer files do not fit the other library's layout; the message says what."""


@dataclass
class Gpt2Bpe:
    encoder: dict[str, int]  # BPE token -> GPT-2 id (encoder.json)
    merges: list[tuple[str, str]]  # vocab.bpe, highest priority first

    @classmethod
    def read(cls, directory: str) -> Gpt2Bpe:
        """``encoder.json`` + ``vocab.bpe`` parsed exactly as fairseq's ``gpt2_bpe_utils.get_encoder`` does."""
        paths = [os.path.join(directory, name) for name in ("encoder.json", "vocab.bpe")]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise VocabularyError(
                f"{' and '.join(missing)} not found: the HF tokenizer is built from the GPT-2 BPE files "
                "(encoder.json, vocab.bpe) next to dict.txt; copy the ones the model was trained with there"
            )
        with open(paths[0], encoding="utf-8") as f:
            encoder = json.load(f)
        with open(paths[1], encoding="utf-8") as f:
            lines = f.read().split("\n")[1:-1]  # fairseq skips the header and the text after the last newline
        return cls(encoder, [tuple(line.split()) for line in lines])

    def write(self, directory: str) -> None:
        write_json_atomic(os.path.join(directory, "encoder.json"), self.encoder, indent=None)
        write_text_atomic(os.path.join(directory, "vocab.bpe"), merges_text(self.merges))

    def check_closed(self, where: str) -> None:
        """Every byte symbol and every merge's parts and result must have an id (fairseq looks them all up)."""
        from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

        needed = set(bytes_to_unicode().values())
        for a, b in self.merges:
            needed.update((a, b, a + b))
        lacking = sorted(needed - self.encoder.keys())
        if lacking:
            raise VocabularyError(f"{where} lacks {len(lacking)} BPE tokens its merges or bytes produce "
                                  f"(e.g. {lacking[:5]}); the vocabulary and the merges do not belong together")


def merges_text(merges: list[tuple[str, str]]) -> str:
    return "\n".join([BPE_HEADER] + [f"{a} {b}" for a, b in merges]) + "\n"


def hf_vocab(symbols: list[str], bpe: Gpt2Bpe) -> tuple[dict[str, int], int]:
    """fairseq dictionary symbols (index order, ``<mask>`` last) -> HF ``vocab.json`` and the dictionary size ``N``.

    BPE tokens the dictionary lacks get ids ``N, N+1, ...`` (see the module docstring).
    """
    n = len(symbols)
    if tuple(symbols[:4]) != SPECIALS or symbols[-1] != MASK:
        raise VocabularyError(f"the dictionary starts {symbols[:4]} and ends {symbols[-1]!r}; RoBERTa's layout is "
                              f"{list(SPECIALS)} first and {MASK!r} last (what the masked_lm task builds from dict.txt)")
    bpe.check_closed("encoder.json")
    token_of_id = {i: token for token, i in bpe.encoder.items()}
    vocab: dict[str, int] = {}
    for index, symbol in enumerate(symbols):
        token = symbol
        if 4 <= index < n - 1 and symbol.isdigit():
            if int(symbol) not in token_of_id:
                raise VocabularyError(f"dict.txt symbol {symbol!r} is not a GPT-2 id of encoder.json; "
                                      "dict.txt and the BPE files do not belong together")
            token = token_of_id[int(symbol)]
        if token in vocab:
            raise VocabularyError(f"dict.txt entries {vocab[token]} and {index} are the same BPE token {token!r}")
        vocab[token] = index
    for token in sorted(bpe.encoder, key=bpe.encoder.get):
        vocab.setdefault(token, len(vocab))
    return vocab, n


@dataclass
class HfVocab:
    vocab: dict[str, int]
    merges: list[tuple[str, str]]

    @classmethod
    def read(cls, directory: str) -> HfVocab:
        """From ``tokenizer.json`` (what HF 5 loads first) or else ``vocab.json`` + ``merges.txt``."""
        path = os.path.join(directory, "tokenizer.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                model = json.load(f).get("model", {})
            if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
                raise VocabularyError(f"{path} holds a {model.get('type')!r} tokenizer; fairseq's GPT-2 "
                                      "encoder needs a byte-level BPE (RoBERTa's)")
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
            return cls(model["vocab"], merges)
        paths = [os.path.join(directory, name) for name in ("vocab.json", "merges.txt")]
        if not all(os.path.isfile(p) for p in paths):
            raise VocabularyError(f"{directory} has no tokenizer.json and no vocab.json + merges.txt; "
                                  "fairseq needs the model's byte-level BPE files")
        with open(paths[0], encoding="utf-8") as f:
            vocab = json.load(f)
        with open(paths[1], encoding="utf-8") as f:
            lines = [line for line in f.read().split("\n") if line and not line.startswith("#version")]
        return cls(vocab, [tuple(line.split(" ")) for line in lines])

    def to_fairseq(self, dictionary_size: int) -> tuple[Gpt2Bpe, list[str]]:
        """-> GPT-2 BPE files and the ``dict.txt`` symbols (ids ``4 .. N-2``) of a dictionary of ``N`` entries.

        The HF ids double as GPT-2 ids, so ``dict.txt`` simply lists ``4 .. N-2``. Tokens fairseq must know
        but maps to ``<unk>`` (ids ``>= N``, or extra tokens on id 3) get GPT-2 ids that ``dict.txt`` lacks.
        """
        n = dictionary_size
        by_id: dict[int, list[str]] = {}
        for token, i in self.vocab.items():
            by_id.setdefault(i, []).append(token)
        for i, token in enumerate(SPECIALS):
            if token not in by_id.get(i, []):
                raise VocabularyError(f"token id {i} is {by_id.get(i)}, not {token!r}: fairseq's dictionary puts "
                                      f"{list(SPECIALS)} at ids 0-3")
        if by_id.get(n - 1) != [MASK]:
            raise VocabularyError(f"id {n - 1} (the last of the model's {n}) is {by_id.get(n - 1)}, not {MASK!r}, "
                                  "which fairseq's masked_lm task appends last")
        holes = [i for i in range(4, n - 1) if len(by_id.get(i, [])) != 1]
        if holes:
            i = holes[0]
            raise VocabularyError(f"{len(holes)} ids in 4..{n - 2} have no token or several (id {i}: "
                                  f"{by_id.get(i)}); fairseq's dictionary needs exactly one token per id")
        encoder = {by_id[i][0]: i for i in range(4, n - 1)}
        spare = max(n, max(by_id) + 1)  # GPT-2 ids for the extra tokens on id 3
        for token, i in self.vocab.items():
            if i >= n:
                encoder[token] = i
            elif i == UNK and token != SPECIALS[UNK]:
                encoder[token], spare = spare, spare + 1
        bpe = Gpt2Bpe(encoder, list(self.merges))
        bpe.check_closed("the HF vocabulary")
        return bpe, [str(i) for i in range(4, n - 1)]


def write_dictionary(directory: str, symbols: list[str]) -> None:
    """``dict.txt`` without the specials fairseq adds itself and without ``<mask>`` (the task appends it)."""
    write_text_atomic(os.path.join(directory, "dict.txt"), "".join(f"{s} 1\n" for s in symbols))
