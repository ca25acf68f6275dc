"""The tiny GPT-2-format BPE the interop and prep tests rely on behaves like GPT-2's files in fairseq."""

import os

import bpe_fixtures as bf
from fairseq.data import Dictionary
from fairseq_longformer import LongformerRobertaModel


def test_fairseq_reads_the_trained_bpe_and_round_trips_text(tmp_path):
    encoder_json = bf.train_gpt2_bpe(str(tmp_path))
    assert len(encoder_json) == bf.BPE_VOCAB
    bpe = bf.gpt2_encoder(str(tmp_path))
    text = "Déjà vu: x  =  3.14;\n\tit's   naïve ☃ — 1234567 tabs\tand  spaces "
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # merges were learned and are applied


def test_left_out_pieces_become_unk_in_the_model_dictionary(tmp_path):
    bf.train_gpt2_bpe(str(tmp_path))
    symbols = bf.write_bpe_dictionary(str(tmp_path), leave_out=5)
    dictionary = Dictionary.load(os.path.join(tmp_path, "dict.txt"))
    assert [dictionary[i] for i in range(dictionary.nspecial, len(dictionary))] == symbols
    full = bf.write_bpe_dictionary(str(tmp_path), leave_out=0)
    dropped = set(full) - set(symbols)
    assert len(dropped) == 5
    assert all(dictionary.index(s) == dictionary.unk() for s in dropped)


def test_a_converted_bpe_longformer_loads_with_the_gpt2_hub_interface(tmp_path):
    model_dir = bf.make_bpe_longformer_dir(str(tmp_path / "lf"), max_positions=64, attention_window="8")
    hub = LongformerRobertaModel.from_pretrained(model_dir, bpe="gpt2")
    tokens = hub.encode("The for statement iterates over a sequence.")
    assert hub.decode(tokens) == "The for statement iterates over a sequence."
    assert hub.extract_features(tokens).shape == (1, len(tokens), 32)
    assert not os.path.exists(str(tmp_path / "lf") + "_roberta_source")
