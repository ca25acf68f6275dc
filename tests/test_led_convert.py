"""BART -> LED conversion: exact against fairseq's own BART on short inputs (encoder outputs and greedy
generations, both checkpoint layouts), the weight layout, the hub, bad inputs."""

import os

import pytest
import torch

import led_fixtures as lf
import roberta_fixtures as rf
from fairseq.models.bart import BARTModel
from fairseq.sequence_generator import SequenceGenerator
from fairseq_longformer import LongformerBartModel
from fairseq_longformer.convert_bart import ConversionError, LedConversionOptions, convert, main

SOURCE_POSITIONS = lf.TINY["max_positions"]  # 32
POSITIONS_KEY = "encoder.embed_positions.weight"
PAD, BOS, EOS = 1, 0, 2


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return rf.convert_both_layouts(tmp_path_factory.mktemp("bart"), lf.make_bart_dir, convert,
                                   LedConversionOptions(max_source_positions=128, attention_window="64"), "led")


def _sources(lengths, seed=0, left_pad=True):
    """``<s> w.. </s>`` rows padded as fairseq's translation task pads them (left by default)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    tokens = torch.full((len(lengths), width), PAD)
    for row, n in enumerate(lengths):
        seq = torch.randint(4, rf.VOCAB, (n,), generator=generator)
        seq[0], seq[-1] = BOS, EOS
        if left_pad:
            tokens[row, width - n:] = seq
        else:
            tokens[row, :n] = seq
    return tokens


def _models(src, led):
    bart = BARTModel.from_pretrained(src, bpe=None).models[0]  # fairseq's own loader is the reference
    converted = LongformerBartModel.from_pretrained(led).models[0]
    bart.eval(), converted.eval()  # the hub made them generation-only; eval() returns None then
    return bart, converted


def _greedy(model, tokens, max_len=12):
    generator = SequenceGenerator([model], model.decoder.dictionary, beam_size=1, max_len_b=max_len)
    sample = {"net_input": {"src_tokens": tokens, "src_lengths": tokens.ne(PAD).sum(-1)}}
    with torch.no_grad():
        return [hypos[0] for hypos in generator.generate([model], sample)]


@pytest.mark.parametrize("kind", ["current", "legacy"])
def test_encoder_output_and_greedy_generations_equal_barts_on_short_inputs(dirs, kind):
    src, led = dirs[kind]
    bart, converted = _models(src, led)
    # window 64 -> 32 keys each side; T <= 32 means every token sees every other (full attention)
    for left_pad in (True, False):
        tokens = _sources([31, 20, 9], left_pad=left_pad)
        real = tokens.ne(PAD).t()  # encoder_out is T x B x C
        with torch.no_grad():
            expected = bart.encoder(tokens)["encoder_out"][0]
            got = converted.encoder(tokens)["encoder_out"][0]  # global attention on <s> (copied Qg/Kg/Vg)
        assert (got - expected)[real].abs().max().item() <= 1e-5

    tokens = _sources([31, 20, 9])
    expected, got = _greedy(bart, tokens), _greedy(converted, tokens)
    for e, g in zip(expected, got):
        assert torch.equal(e["tokens"], g["tokens"])
        assert torch.allclose(e["positional_scores"], g["positional_scores"], atol=1e-5)
    assert any(len(h["tokens"]) > 3 for h in expected)  # not trivially empty generations


def test_window_narrower_than_input_changes_the_encoder(dirs):
    """The converse: once tokens fall outside the window, the outputs do differ from BART's."""
    src, led = dirs["current"]
    bart, _ = _models(src, led)
    narrow = rf.load_longformer(led, attention_window="8")
    narrow.eval()
    tokens = _sources([31])
    with torch.no_grad():
        difference = (narrow.encoder(tokens)["encoder_out"][0] - bart.encoder(tokens)["encoder_out"][0]).abs().max()
    assert difference > 1e-2


def test_encoder_positions_copied_decoder_positions_kept_global_projections_untied(dirs):
    src, led = dirs["current"]
    source, converted = rf.load_states(src, led)
    rf.assert_positions_tiled(source[POSITIONS_KEY], converted[POSITIONS_KEY], 128, SOURCE_POSITIONS)
    assert torch.equal(converted["decoder.embed_positions.weight"], source["decoder.embed_positions.weight"])
    assert not any("global" in key for key in converted if key.startswith("decoder."))

    model = LongformerBartModel.from_pretrained(led).model
    rf.assert_global_projections_untied_copies(model.encoder.layers[1].self_attn)
    assert model.encoder.max_positions() == 128 and model.decoder.max_positions() == SOURCE_POSITIONS


def test_hub_generate_equals_sequence_generator_and_takes_long_sources(dirs):
    _, led = dirs["current"]
    hub = LongformerBartModel.from_pretrained(led)
    assert hub.bpe is None and hub.max_positions[0] == 128
    tokens = _sources([31, 20], left_pad=False)
    rows = [row[row.ne(PAD)] for row in tokens]
    # BART's hub forces <s> as the first output token; give the generator the same prefix
    generator = SequenceGenerator([hub.model], hub.model.decoder.dictionary, beam_size=2, max_len_b=10)
    hypos = hub.generate(rows, beam=2, max_len_b=10)
    for row, hypo in zip(rows, hypos):
        sample = {"net_input": {"src_tokens": row[None], "src_lengths": torch.tensor([len(row)])}}
        with torch.no_grad():
            expected = generator.generate([hub.model], sample, prefix_tokens=torch.tensor([[BOS]]))[0][0]
        assert torch.equal(hypo[0]["tokens"], expected["tokens"])
    long_source = _sources([100])[0]  # beyond BART's 32 positions, within LED's 128
    # (same beam: fairseq sets the beamable cross-attention's beam size only for beams > 1)
    assert len(hub.generate([long_source], beam=2, max_len_b=5)[0]) == 2


def test_output_is_written_atomically_and_refuses_to_overwrite(dirs):
    src, led = dirs["current"]
    rf.assert_written_whole_and_not_overwritten(convert, LedConversionOptions(128, "64"), src, led)


def test_bad_inputs_are_refused_with_a_clear_message(dirs, tmp_path):
    src, led = dirs["current"]
    out = rf.assert_refuses_bad_sizes_and_missing_model(
        convert, LedConversionOptions, src, tmp_path,
        too_small="--max-source-positions 16 is smaller than the source's 32",
        not_found="model.pt not found: --input must be a fairseq BART directory")
    with pytest.raises(ConversionError, match="'longformer_bart_base' model, not a BART one"):
        convert(led, out, LedConversionOptions())  # a real fairseq checkpoint of another model: the LED itself
    roberta = rf.make_roberta_dir(str(tmp_path / "roberta"))
    with pytest.raises(ConversionError, match="'roberta' model, not a BART one"):
        convert(roberta, out, LedConversionOptions())
    assert not os.path.exists(out)

    with pytest.raises(SystemExit, match="longformer-convert-bart: error: .*positions can only be extended"):
        main(["--input", src, "--output", out, "--max-source-positions", "8"])
