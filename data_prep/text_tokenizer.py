"""Text -> a pretrained model's dictionary ids, with each token's character span in the text.

The finetuning prep tools (classification, QA, summarization) tokenize exactly as the model was
pretrained: fairseq's GPT-2 BPE plus the model directory's ``dict.txt`` (what ``RobertaHubInterface.encode``
gives), a sentencepiece model (``sentencepiece.bpe.model``, pieces as dictionary symbols, as fairseq's
``--bpe sentencepiece``), or whitespace-separated tokens for text that is already tokenized. Every
tokenizer also returns the span ``(start, end)`` of each token in the input string, so that character
offsets (SQuAD answers) map to tokens and predicted token spans map back to the exact original text.

A tokenizer is described by a small picklable :class:`TokenizerSpec` and loaded once per worker process.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fairseq.data import Dictionary

from .corpus.tokenizers import _load_fairseq_gpt2_module

GPT2_FILES = ("encoder.json", "vocab.bpe")
SPM_FILE = "sentencepiece.bpe.model"
KINDS = ("gpt2", "sentencepiece", "whitespace")

Span = tuple[int, int]


@dataclass(frozen=True)
class TokenizerSpec:
    """Which tokenizer, and the files it reads (``dict_txt`` is the model's dictionary)."""

    kind: str
    dict_txt: Path
    model_dir: Path | None = None

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> "TokenizerSpec":
        """The tokenizer a Longformer/BART directory was pretrained with, found from its files."""
        model_dir = Path(model_dir)
        if not (model_dir / "dict.txt").is_file():
            raise ValueError(f"--model-dir {model_dir} has no dict.txt; give the pretrained model's directory "
                             "(what longformer-convert-roberta / longformer-convert-bart write)")
        if all((model_dir / name).is_file() for name in GPT2_FILES):
            return cls("gpt2", model_dir / "dict.txt", model_dir)
        if (model_dir / SPM_FILE).is_file():
            return cls("sentencepiece", model_dir / "dict.txt", model_dir)
        raise ValueError(f"--model-dir {model_dir} has neither GPT-2 BPE files ({' and '.join(GPT2_FILES)}) nor "
                         f"{SPM_FILE}; copy the tokenizer files the model was pretrained with there")

    def load(self) -> "TextTokenizer":
        dictionary = Dictionary.load(str(self.dict_txt))
        if self.kind == "gpt2":
            return Gpt2Tokenizer(dictionary, self.model_dir)
        if self.kind == "sentencepiece":
            return SentencePieceTokenizer(dictionary, self.model_dir)
        if self.kind == "whitespace":
            return WhitespaceTokenizer(dictionary)
        raise ValueError(f"unknown tokenizer {self.kind!r}; choose one of {', '.join(KINDS)}")


class TextTokenizer:
    """``encode(text) -> (ids, spans)``: dictionary indices (no ``<s>``/``</s>``) and character spans."""

    def __init__(self, dictionary: Dictionary):
        self.dictionary = dictionary

    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        symbols, spans = self.symbols(text)
        return [self.dictionary.index(s) for s in symbols], spans

    def symbols(self, text: str) -> tuple[list[str], list[Span]]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of dictionary ids (``<unk>`` has no text and is written as the dictionary's ``<unk>``)."""
        raise NotImplementedError


class Gpt2Tokenizer(TextTokenizer):
    """fairseq's GPT-2 BPE (the very code fairseq runs), pre-token by pre-token, keeping byte spans."""

    def __init__(self, dictionary: Dictionary, model_dir: Path):
        super().__init__(dictionary)
        gpt2 = _load_fairseq_gpt2_module()
        self.bpe = gpt2.get_encoder(str(model_dir / "encoder.json"), str(model_dir / "vocab.bpe"))

    def symbols(self, text: str) -> tuple[list[str], list[Span]]:
        bpe = self.bpe
        symbols, spans = [], []
        for match in bpe.re.finditer(bpe.pat, text):
            word = match.group()
            data = word.encode("utf-8")
            # char_at[b] = index in `word` of the character that byte b belongs to
            char_at = [i for i, ch in enumerate(word) for _ in range(len(ch.encode("utf-8")))]
            byte = 0
            for piece in bpe.bpe("".join(bpe.byte_encoder[b] for b in data)).split(" "):
                start, end = char_at[byte], char_at[byte + len(piece) - 1] + 1
                symbols.append(str(bpe.encoder[piece]))
                spans.append(_trimmed(text, match.start() + start, match.start() + end))
                byte += len(piece)  # one byte per unicode stand-in character
        return symbols, spans

    def decode(self, ids: Sequence[int]) -> str:
        out, run = [], []  # decode runs of BPE ids together: a character's bytes may span two tokens
        for symbol in (self.dictionary[i] for i in ids):
            if symbol.isdigit():
                run.append(int(symbol))
                continue
            out += [self.bpe.decode(run), symbol]
            run = []
        return "".join(out + [self.bpe.decode(run)])


class SentencePieceTokenizer(TextTokenizer):
    """A sentencepiece model whose pieces are the dictionary's symbols (fairseq's ``--bpe sentencepiece``)."""

    def __init__(self, dictionary: Dictionary, model_dir: Path):
        import sentencepiece as spm

        super().__init__(dictionary)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_dir / SPM_FILE))

    def symbols(self, text: str) -> tuple[list[str], list[Span]]:
        pieces = self.sp.encode(text, return_type="proto").pieces
        # sentencepiece reports byte offsets into the UTF-8 input
        char_at = [i for i, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))] + [len(text)]
        spans = [_trimmed(text, char_at[p.begin], char_at[max(p.begin, p.end - 1)] + (p.end > p.begin))
                 for p in pieces]
        return [p.piece for p in pieces], spans

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.dictionary[i] for i in ids).replace("\u2581", " ").strip()


class WhitespaceTokenizer(TextTokenizer):
    """Already tokenized text: every run of non-space characters is one dictionary symbol."""

    def symbols(self, text: str) -> tuple[list[str], list[Span]]:
        matches = list(re.finditer(r"\S+", text))
        return [m.group() for m in matches], [m.span() for m in matches]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.dictionary[i] for i in ids)


def _trimmed(text: str, start: int, end: int) -> Span:
    """A token's span without its leading/trailing white space (GPT-2 tokens carry the space before a
    word); a token that is only white space keeps its span."""
    s, e = start, end
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return (s, e) if s < e else (start, end)


def build_whitespace_dictionary(texts, min_count: int = 1) -> Dictionary:
    """A dictionary of the whitespace tokens of ``texts`` (the training split), most frequent first."""
    dictionary = Dictionary()
    for text in texts:
        for token in text.split():
            dictionary.add_symbol(token)
    dictionary.finalize(threshold=min_count, padding_factor=1)
    return dictionary
