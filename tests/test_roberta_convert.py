"""RoBERTa -> Longformer conversion: exact equivalence on short inputs, weight layout, bad inputs."""

import os

import pytest
import torch

import roberta_fixtures as rf
from fairseq.models.roberta import RobertaModel
from fairseq_longformer import LongformerRobertaModel
from fairseq_longformer.convert_roberta import ConversionError, ConversionOptions, convert, main

SOURCE_POSITIONS = rf.TINY["max_positions"]  # 32
POSITIONS_KEY = "encoder.sentence_encoder.embed_positions.weight"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return rf.convert_both_layouts(tmp_path_factory.mktemp("roberta"), rf.make_roberta_dir, convert,
                                   ConversionOptions(max_positions=128, attention_window="64"), "lf")


def _tokens(lengths, seq_len, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, rf.VOCAB, (len(lengths), seq_len), generator=generator)
    tokens[:, 0] = 0  # <s>
    for row, n in enumerate(lengths):
        tokens[row, n:] = 1  # padding
    return tokens


@pytest.mark.parametrize("kind", ["current", "legacy"])
def test_converted_features_equal_roberta_on_inputs_shorter_than_half_the_window(dirs, kind):
    src, lf = dirs[kind]
    roberta = RobertaModel.from_pretrained(src, bpe=None)  # fairseq's own loader is the reference
    longformer = LongformerRobertaModel.from_pretrained(lf)
    roberta.eval(), longformer.eval()
    # window 64 -> 32 keys each side; T = 31 < 32 means every token sees every other (full attention)
    tokens = _tokens([31, 20, 9], seq_len=31)
    real = tokens.ne(1)
    expected = roberta.extract_features(tokens)
    got = longformer.extract_features(tokens)
    assert (got - expected)[real].abs().max().item() <= 1e-5

    # Qg/Kg/Vg start as copies of Q/K/V, so global tokens do not change the result either here
    global_mask = torch.zeros_like(real)
    global_mask[0, 0] = True
    global_mask[1, [0, 3, 7]] = True
    got_global = longformer.extract_features(tokens, global_attention_mask=global_mask)
    assert (got_global - expected)[real].abs().max().item() <= 1e-5


def test_window_narrower_than_input_changes_features(dirs):
    """The converse: once tokens fall outside the window, the outputs do differ from RoBERTa's."""
    src, _ = dirs["current"]
    roberta = RobertaModel.from_pretrained(src, bpe=None)
    narrow = rf.load_longformer(dirs["current"][1], attention_window="8")
    roberta.eval(), narrow.eval()
    tokens = _tokens([31], seq_len=31)
    difference = (narrow(tokens, features_only=True)[0] - roberta.extract_features(tokens)).abs().max()
    assert difference > 1e-2


def test_positions_copied_with_padding_rows_kept_and_global_projections_untied(dirs):
    src, lf = dirs["current"]
    source, converted = rf.load_states(src, lf)
    rf.assert_positions_tiled(source[POSITIONS_KEY], converted[POSITIONS_KEY], 128, SOURCE_POSITIONS)

    model = LongformerRobertaModel.from_pretrained(lf).model
    rf.assert_global_projections_untied_copies(model.encoder.sentence_encoder.layers[1].self_attn)


def test_random_position_init_keeps_source_rows_and_draws_new_ones(dirs, tmp_path):
    src, lf = dirs["current"]
    convert(src, str(tmp_path / "random"), ConversionOptions(128, "64", position_init="random", seed=3))
    copied = torch.load(os.path.join(lf, "model.pt"), weights_only=True)["model"][POSITIONS_KEY]
    random = torch.load(tmp_path / "random" / "model.pt", weights_only=True)["model"][POSITIONS_KEY]
    assert torch.equal(random[: 2 + SOURCE_POSITIONS], copied[: 2 + SOURCE_POSITIONS])
    new_rows = random[2 + SOURCE_POSITIONS:]
    assert not torch.equal(new_rows, copied[2 + SOURCE_POSITIONS:])
    assert 0.015 < new_rows.std().item() < 0.025  # BERT init N(0, 0.02)


def test_output_is_written_atomically_and_refuses_to_overwrite(dirs):
    src, lf = dirs["current"]
    rf.assert_written_whole_and_not_overwritten(convert, ConversionOptions(128, "64"), src, lf)


def test_bad_inputs_are_refused_with_a_clear_message(dirs, tmp_path):
    src, _ = dirs["current"]
    out = rf.assert_refuses_bad_sizes_and_missing_model(convert, ConversionOptions, src, tmp_path,
                                                        too_small="smaller than the source's 32",
                                                        not_found="model.pt not found")

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.pt").write_bytes(b"not a checkpoint")
    (garbage / "dict.txt").write_text("w0 1\n")
    with pytest.raises(ConversionError, match="not a readable fairseq checkpoint"):
        convert(str(garbage), out, ConversionOptions())

    # a real fairseq checkpoint of another model type: the converted Longformer itself
    _, lf = dirs["current"]
    with pytest.raises(ConversionError, match="not a RoBERTa one"):
        convert(lf, out, ConversionOptions())
    assert not os.path.exists(out)

    with pytest.raises(SystemExit, match="longformer-convert-roberta: error: .*positions can only be extended"):
        main(["--input", src, "--output", out, "--max-positions", "8"])


def test_hub_loader_never_downloads(dirs, tmp_path):
    _, lf = dirs["current"]
    with pytest.raises(ValueError, match="encoder.json .*bpe=None"):
        LongformerRobertaModel.from_pretrained(lf, bpe="gpt2")
    with pytest.raises(ValueError, match="not a directory"):
        LongformerRobertaModel.from_pretrained("longformer.base")
    hub = LongformerRobertaModel.from_pretrained(lf)
    assert hub.bpe is None and hub.model.max_positions() == 128


def test_gpt2_bpe_files_are_taken_from_the_directory_and_fill_mask_works(tmp_path):
    src, lf = str(tmp_path / "src"), str(tmp_path / "lf")
    symbols = rf.write_gpt2_bpe_files(src)
    rf.make_roberta_dir(src, symbols=symbols)
    convert(src, lf, ConversionOptions(max_positions=64, attention_window="32"))
    assert {"encoder.json", "vocab.bpe"} <= set(os.listdir(lf))

    longformer = LongformerRobertaModel.from_pretrained(lf, bpe="gpt2")
    tokens = longformer.encode("hello world")
    assert longformer.decode(tokens) == "hello world"
    filled = longformer.fill_mask("hello <mask>", topk=3)
    # the reference: fairseq's RoBERTa hub on the source, given the same local BPE files
    roberta = RobertaModel.from_pretrained(src, bpe="gpt2", gpt2_encoder_json=os.path.join(src, "encoder.json"),
                                           gpt2_vocab_bpe=os.path.join(src, "vocab.bpe"))
    expected = roberta.fill_mask("hello <mask>", topk=3)
    assert [text for text, _, _ in filled] == [text for text, _, _ in expected]
    assert [p for _, p, _ in filled] == pytest.approx([p for _, p, _ in expected], abs=1e-5)
