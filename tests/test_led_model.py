"""The longformer_bart model: global attention from src_tokens (left and right padding), batches with
padding and global tokens, incremental decoding, gradient checkpointing, the global projections' gradients."""

import pytest
import torch

import led_fixtures as lf
import roberta_fixtures as rf
from fairseq_longformer.models.longformer_bart import source_global_attention_mask

PAD, BOS, EOS = 1, 0, 2


def test_first_source_token_is_global_whatever_the_padding_side():
    right = torch.tensor([[BOS, 7, 8, EOS, PAD, PAD], [BOS, 5, 6, 9, 4, EOS]])
    left = torch.tensor([[PAD, PAD, BOS, 7, 8, EOS], [BOS, 5, 6, 9, 4, EOS]])
    expected_right = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    expected_left = torch.tensor([[0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(source_global_attention_mask(right, "cls", EOS, PAD), expected_right)
    assert torch.equal(source_global_attention_mask(left, "cls", EOS, PAD), expected_left)
    # a source without <s> (fairseq-preprocess data): its first word is the first token
    no_bos = torch.tensor([[PAD, 7, 8, EOS]])
    assert source_global_attention_mask(no_bos, "cls", EOS, PAD).tolist() == [[False, True, False, False]]


def test_first_segment_and_none_modes_on_left_padded_rows():
    left = torch.tensor([[PAD, BOS, 7, EOS, 8, EOS], [BOS, 5, 6, EOS, 4, EOS]])
    assert source_global_attention_mask(left, "first-segment", EOS, PAD).int().tolist() == [
        [0, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    assert not source_global_attention_mask(left, "none", EOS, PAD).any()
    with pytest.raises(ValueError, match="--source-global-attention 'first'"):
        source_global_attention_mask(left, "first", EOS, PAD)


@pytest.fixture(scope="module")
def led_dir(tmp_path_factory):
    return lf.make_led_dir(str(tmp_path_factory.mktemp("led") / "led"), attention_window="64")


def _load(led_dir, **overrides):
    model = rf.load_longformer(led_dir, **overrides)
    model.eval()
    return model


def _rows(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        row = torch.randint(4, rf.VOCAB, (n,), generator=generator)
        row[0], row[-1] = BOS, EOS
        rows.append(row)
    return rows


def _pad(rows, left):
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD)
    for i, r in enumerate(rows):
        if left:
            out[i, width - len(r):] = r
        else:
            out[i, :len(r)] = r
    return out


def _encode(model, tokens, **kwargs):
    with torch.no_grad():
        return model.encoder(tokens, **kwargs)["encoder_out"][0].transpose(0, 1)  # B x T x C


def test_padded_batches_with_global_tokens_equal_each_row_alone(led_dir):
    """Window 8 over sources up to 100 tokens: local attention really is local here, and <s> is global."""
    model = _load(led_dir, attention_window="8")
    rows = _rows([100, 61, 23])
    left, right = _pad(rows, left=True), _pad(rows, left=False)
    out_left, out_right = _encode(model, left), _encode(model, right)
    for i, row in enumerate(rows):
        alone = _encode(model, row[None])[0]
        n = len(row)
        assert (out_left[i, -n:] - alone).abs().max() <= 1e-5
        assert (out_right[i, :n] - alone).abs().max() <= 1e-5

    # the default mask is exactly "the first real token of each row"; more global tokens change the output
    first = left.ne(PAD) & (left.ne(PAD).cumsum(-1) == 1)
    assert (_encode(model, left, global_attention_mask=first) - out_left).abs().max() <= 1e-6
    more = first.clone()
    more[0, 50] = True
    changed = _encode(model, left, global_attention_mask=more)
    assert (changed[0] - out_left[0]).abs().max() > 1e-3
    assert (changed[1:] - out_left[1:]).abs().max() <= 1e-6  # other rows untouched
    none = _encode(_load(led_dir, attention_window="8", source_global_attention="none"), left)
    assert (none - out_left).abs().max() > 1e-3  # without global attention, far tokens do not see <s>


def test_incremental_decoding_equals_full_decoding(led_dir):
    model = _load(led_dir, attention_window="8")
    src = _pad(_rows([70, 40], seed=1), left=True)
    prev = torch.cat([torch.full((2, 1), EOS), torch.randint(4, rf.VOCAB, (2, 9))], dim=1)
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths=src.ne(PAD).sum(-1))
        full, _ = model.decoder(prev, encoder_out=encoder_out)
        state = {}
        steps = [model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)[0]
                 for t in range(prev.shape[1])]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def _loss_and_grads(model, src, prev, target):
    model.zero_grad()
    logits, _ = model(src, src.ne(PAD).sum(-1), prev)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=PAD)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(led_dir):
    src = _pad(_rows([70, 40], seed=2), left=True)
    target = torch.randint(4, rf.VOCAB, (2, 8))
    prev = torch.cat([torch.full((2, 1), EOS), target[:, :-1]], dim=1)
    plain = rf.load_longformer(led_dir, attention_window="8").train()
    checkpointed = rf.load_longformer(led_dir, attention_window="8", checkpoint_activations=True).train()
    assert all(hasattr(layer, "precheckpoint_forward") for layer in checkpointed.encoder.layers)  # fairseq's wrapper
    assert not hasattr(plain.encoder.layers[0], "precheckpoint_forward")
    loss_a, grads_a = _loss_and_grads(plain, src, prev, target)
    loss_b, grads_b = _loss_and_grads(checkpointed, src, prev, target)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name
    # <s> is global by default, so the global projections take part in the loss
    assert grads_a["encoder.layers.0.self_attn.q_global.weight"].abs().max() > 0


def test_without_global_tokens_the_global_projections_still_get_a_zero_gradient(led_dir):
    """What lets DistributedDataParallel run without --find-unused-parameters."""
    model = rf.load_longformer(led_dir, attention_window="8", source_global_attention="none").train()
    src = _pad(_rows([30], seed=3), left=True)
    target = torch.randint(4, rf.VOCAB, (1, 5))
    prev = torch.cat([torch.full((1, 1), EOS), target[:, :-1]], dim=1)
    _, grads = _loss_and_grads(model, src, prev, target)
    for layer in range(lf.TINY["layers"]):
        grad = grads[f"encoder.layers.{layer}.self_attn.k_global.weight"]
        assert grad.abs().max() == 0
