"""The char-LM model: causal and windowed per layer, registered with fairseq, options validated."""

import pytest
import torch

from fairseq.data import Dictionary
from fairseq_longformer.models.longformer_lm import LongformerLanguageModel, LongformerLMConfig
from fairseq_longformer.modules.causal_window_decoder_layer import CausalWindowDecoderLayer


def receptive_field(T, i, window, dilation):
    """Keys one layer lets query i see: heads without dilation see i-window..i, dilated heads
    every dilation-th key back to i - window*dilation."""
    return {j for j in range(T) if 0 <= i - j <= window or (0 <= i - j <= window * dilation and (i - j) % dilation == 0)}


@pytest.mark.parametrize("window,dilation", [(3, 1), (4, 3)])
def test_layer_gradient_is_zero_outside_one_layer_receptive_field(window, dilation):
    T, C, H = 40, 16, 4
    layer = CausalWindowDecoderLayer(C, 32, H, window, dilation, dilated_heads=2, rel_dim=None, dropout=0.0,
                                     attention_dropout=0.0, activation_dropout=0.0, backend="auto")
    layer.eval()
    x = torch.randn(T, 1, C, requires_grad=True)
    for i in (0, 7, 25, T - 1):
        (grad,) = torch.autograd.grad(layer(x)[i].sum(), x)
        touched = {j for j in range(T) if grad[j].abs().max() > 0}
        assert touched == receptive_field(T, i, window, dilation), i


class TinyTask:
    def __init__(self, n_symbols=20):
        self.target_dictionary = Dictionary()
        for s in range(n_symbols):
            self.target_dictionary.add_symbol(str(s))


def build(**overrides):
    cfg = LongformerLMConfig(decoder_embed_dim=32, decoder_ffn_embed_dim=64, decoder_layers=3,
                             decoder_attention_heads=4, attention_window=[2, 4, 8], attention_dilation=[1, 1, 2],
                             dropout=0.0)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return LongformerLanguageModel.build_model(cfg, TinyTask())


def test_model_is_causal_and_right_padding_is_harmless():
    model = build().eval()
    tokens = torch.randint(4, 24, (2, 50))
    logits, _ = model(tokens)
    assert logits.shape == (2, 50, len(model.decoder.dictionary))
    changed = tokens.clone()
    changed[:, 30:] = 5  # the future changes ...
    torch.testing.assert_close(model(changed)[0][:, :30], logits[:, :30])  # ... the past does not
    padded = torch.cat([tokens, torch.full((2, 6), model.decoder.padding_idx)], dim=1)
    torch.testing.assert_close(model(padded)[0][:, :50], logits, atol=1e-5, rtol=1e-5)


def test_backends_agree_on_the_whole_model():
    model = build(attention_backend="dense").eval()
    tokens = torch.randint(4, 24, (2, 45))
    dense = model(tokens)[0]
    assert model.decoder.layers[0].self_attn.backend == "dense"
    for layer in model.decoder.layers:
        layer.self_attn.backend = "torch"
    torch.testing.assert_close(model(tokens)[0], dense, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("overrides,message", [
    ({"attention_window": [2, 4]}, "has 2 values but the model has 3 layers"),
    ({"attention_window": [2, 0, 4]}, "ints >= 1"),
    ({"attention_dilation": [1, 1, 0]}, "ints >= 1"),
    ({"dilated_heads": 5}, r"must lie in \[0, 4\]"),
    ({"rel_pos_dim": 3}, "positive even"),
])
def test_bad_options_are_refused_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        build(**overrides)


def test_arch_presets_follow_table_12():
    from fairseq import options

    parser = options.get_training_parser()
    small = options.parse_args_and_arch(parser, ["data", "--task", "language_modeling", "--arch", "longformer_lm_small"])
    assert (small.decoder_layers, small.decoder_attention_heads, small.decoder_embed_dim) == (12, 8, 512)
    assert small.attention_dilation == [1] * 6 + [2, 2, 3, 3, 4, 4] and small.dropout == 0.2
    assert small.attention_window[0] == 32 and small.attention_window[-1] == 512
    parser = options.get_training_parser()
    large = options.parse_args_and_arch(parser, ["data", "--task", "language_modeling", "--arch", "longformer_lm_large",
                                                 "--attention-window", "16,32"])
    assert large.decoder_layers == 30 and large.dropout == 0.4
    assert large.attention_dilation == [1] * 15 + [2] * 5 + [3] * 5 + [4] * 5
    assert large.attention_window == [16, 32]  # the command line wins over the preset


def test_checkpoint_activations_gives_the_same_gradients():
    torch.manual_seed(3)
    plain = build(dropout=0.1).train()
    checkpointed = build(dropout=0.1, checkpoint_activations=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    tokens = torch.randint(4, 24, (2, 40))
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(7)  # same dropout masks in both runs
        model(tokens)[0].logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0])
