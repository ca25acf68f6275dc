"""longformer_roberta model: global-attention batch invariance, backends agree, gradient checkpointing,
DistributedDataParallel without --find-unused-parameters, task-provided global masks."""

import pytest
import torch
import torch.nn as nn
import torch.multiprocessing as mp
import torch.nn.functional as F

import roberta_fixtures as rf
from fairseq_longformer.convert_roberta import ConversionOptions, convert

WINDOW = 8  # narrower than the inputs below, so the window and the global tokens both matter


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    src = rf.make_roberta_dir(str(root / "src"))
    convert(src, str(root / "lf"), ConversionOptions(max_positions=96, attention_window=str(WINDOW)))
    return str(root / "lf")


def _batch():
    """Three rows with different lengths (padding) and different numbers of global tokens."""
    lengths = [70, 41, 23]
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, rf.VOCAB, (3, 70), generator=generator)
    tokens[:, 0] = 0
    global_mask = torch.zeros(3, 70, dtype=torch.bool)
    global_mask[0, [0, 33, 50, 51]] = True  # 4 global tokens
    global_mask[1, 0] = True                # 1 global token
    for row, n in enumerate(lengths):       # row 2: none
        tokens[row, n:] = 1
    return tokens, global_mask, lengths


def _features(model, tokens, global_mask):
    return model(tokens, features_only=True, global_attention_mask=global_mask)[0]


def test_a_rows_output_does_not_depend_on_other_rows_padding_or_global_tokens(model_dir):
    model = rf.load_longformer(model_dir).eval()
    tokens, global_mask, lengths = _batch()
    with torch.no_grad():
        batched = _features(model, tokens, global_mask)
        for row, n in enumerate(lengths):
            alone = _features(model, tokens[row:row + 1, :n], global_mask[row:row + 1, :n])
            assert (batched[row, :n] - alone[0]).abs().max().item() <= 1e-5
        # the global tokens are really used: dropping them changes rows 0 and 1, not row 2
        without = _features(model, tokens, None)
    assert (batched[0, :70] - without[0, :70]).abs().max() > 1e-3
    assert (batched[1, :41] - without[1, :41]).abs().max() > 1e-3
    assert (batched[2, :23] - without[2, :23]).abs().max() <= 1e-5


def test_default_backend_matches_dense_reference_inside_the_model(model_dir):
    model = rf.load_longformer(model_dir).eval()
    tokens, global_mask, lengths = _batch()
    real = tokens.ne(1)
    with torch.no_grad():
        auto = _features(model, tokens, global_mask)
        for layer in model.encoder.sentence_encoder.layers:
            layer.self_attn.backend = "dense"
        dense = _features(model, tokens, global_mask)
    assert (auto - dense)[real].abs().max().item() <= 1e-5


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(model_dir):
    plain = rf.load_longformer(model_dir).train()
    checkpointed = rf.load_longformer(model_dir, checkpoint_activations=True).train()
    layers = checkpointed.encoder.sentence_encoder.layers
    assert all(hasattr(layer, "precheckpoint_forward") for layer in layers)  # fairseq's checkpoint_wrapper
    tokens, global_mask, _ = _batch()
    results = []
    for model in (plain, checkpointed):
        model.apply(lambda m: setattr(m, "p", 0.0) if hasattr(m, "p") else None)  # no dropout: comparable
        for layer in model.encoder.sentence_encoder.layers:
            layer.self_attn.dropout = 0.0
        logits = model(tokens, global_attention_mask=global_mask)[0]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), ignore_index=1)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6), name
    # global projections were used here, so they have real (non-zero) gradients
    assert grads_a["encoder.sentence_encoder.layers.0.self_attn.q_global.weight"].abs().max() > 0


def test_global_projections_get_an_exact_zero_gradient_when_unused(model_dir):
    model = rf.load_longformer(model_dir).train()
    tokens, _, _ = _batch()
    logits = model(tokens)[0]
    logits.float().logsumexp(-1).mean().backward()
    attention = model.encoder.sentence_encoder.layers[0].self_attn
    for name in ("q_global", "k_global", "v_global"):
        grad = getattr(attention, name).weight.grad
        assert grad is not None and torch.count_nonzero(grad) == 0
    assert torch.count_nonzero(attention.q_proj.weight.grad) > 0


@pytest.mark.slow
def test_data_parallel_mlm_without_global_tokens_needs_no_find_unused_parameters(model_dir):
    """2 CPU processes, gloo, torch DDP with find_unused_parameters=False, no global tokens."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = rf.free_port()
    procs = [ctx.Process(target=rf.ddp_worker, args=(rank, 2, port, model_dir, results)) for rank in range(2)]
    for p in procs:
        p.start()
    outcomes = {(rank, run): (status, detail) for rank, run, status, detail in
                (results.get(timeout=180) for _ in range(4))}
    for p in procs:
        p.join(timeout=60)
    for rank in (0, 1):
        assert outcomes[rank, "shipped"] == ("ok", 0.0), outcomes  # Qg's gradient exists and is exactly 0
        # control: without the zero-valued term DDP refuses - the failure the term prevents
        status, message = outcomes[rank, "control"]
        assert status == "error" and "find_unused_parameters" in message, outcomes


def test_task_puts_per_token_global_mask_in_net_input(tmp_path):
    from fairseq_longformer.tasks.longformer_masked_lm import LongformerMaskedLMConfig, LongformerMaskedLMTask

    data = rf.write_data(str(tmp_path), train_lines=20, valid_lines=10)
    task = LongformerMaskedLMTask.setup_task(
        LongformerMaskedLMConfig(data=data, tokens_per_sample=32, seed=1, global_attention_symbols="<s>,w5")
    )
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    mask = batch["net_input"]["global_attention_mask"]
    tokens, target = batch["net_input"]["src_tokens"], batch["target"]
    original = torch.where(target.ne(1), target, tokens)
    w5 = task.source_dictionary.index("w5")
    assert mask.dtype == torch.bool and mask.shape == tokens.shape
    assert torch.equal(mask, original.eq(0) | original.eq(w5))  # masked-out <s>/w5 stay global
    assert mask[:, 0].all() and len(set(mask.sum(1).tolist())) > 1  # rows differ in global count

    with pytest.raises(ValueError, match="not in the dictionary"):
        LongformerMaskedLMTask.setup_task(
            LongformerMaskedLMConfig(data=data, tokens_per_sample=32, seed=1, global_attention_symbols="[CLS]")
        )


@pytest.mark.parametrize("row0_globals, folds", [([0, 7], True), ([0, 2, 7, 11], False)])
def test_global_rows_equal_the_op_fed_every_projection(row0_globals, folds):
    """Whichever way the module gets the global rows (folding Kg/Vg into the global queries for few global
    tokens, projecting only Qg's global rows for many or in half precision), the output and every gradient are
    those of the op fed all six full projections. 4 heads x 16 wide: folding while 4 * (most globals in a row) < 16."""
    from fairseq_longformer.modules.layout import merge_heads, split_heads
    from fairseq_longformer.modules.longformer_self_attention import (
        GLOBAL_PROJECTIONS, LOCAL_PROJECTIONS, LongformerSelfAttention)
    from triton_kernels import longformer_attention

    attention = LongformerSelfAttention(16, 4, attention_window=4, backend="dense").double()
    for p in attention.parameters():  # biases too: the folded rows must carry them exactly
        nn.init.normal_(p, std=0.3)
    x = torch.randn(13, 2, 16, dtype=torch.float64, requires_grad=True)
    padding = torch.zeros(2, 13, dtype=torch.bool)
    padding[1, 10:] = True
    glob = torch.zeros(2, 13, dtype=torch.bool)
    glob[0, row0_globals] = True
    glob[1, [3, 11]] = True  # 11 is padding: it counts as padding, as in the op
    upstream = torch.randn(13, 2, 16, dtype=torch.float64)
    assert attention.folds_global_projections(len(row0_globals), torch.float64) is folds
    assert not attention.folds_global_projections(1, torch.bfloat16)  # half precision projects

    def gradients(out):
        params = [x] + [p for name in LOCAL_PROJECTIONS + GLOBAL_PROJECTIONS + ("out_proj",)
                        for p in getattr(attention, name).parameters()]
        return torch.autograd.grad((out * upstream).sum(), params)

    got = attention(x, key_padding_mask=padding, global_mask=glob)
    projections = {n: split_heads(getattr(attention, n)(x), 4) for n in LOCAL_PROJECTIONS + GLOBAL_PROJECTIONS}
    expected = attention.out_proj(merge_heads(longformer_attention(
        *(projections[n] for n in LOCAL_PROJECTIONS), 4, key_padding_mask=padding, global_mask=glob,
        backend="dense", **{n: projections[n] for n in GLOBAL_PROJECTIONS})))
    torch.testing.assert_close(got, expected)
    for a, b in zip(gradients(got), gradients(expected)):
        torch.testing.assert_close(a, b)


def test_folded_global_rows_under_dropout_carry_the_value_bias_of_the_kept_probabilities(monkeypatch):
    """With dropout the kept probabilities no longer sum to 1, so the folded rows must add ``bv`` times their
    sum. One fixed dropout mask (F.dropout replaced) for the folded rows and for a reference built from the
    full Kg/Vg projections by hand."""
    from fairseq_longformer.modules.longformer_self_attention import GlobalTokens, global_rows_folded

    torch.manual_seed(0)
    T, B, C, H, p = 11, 2, 12, 3, 0.5
    q_global, k_global, v_global = (nn.Linear(C, C).double() for _ in range(3))
    for layer in (k_global, v_global):
        nn.init.normal_(layer.bias, std=1.0)
    x = torch.randn(T, B, C, dtype=torch.float64)
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[1, 8:] = True
    glob = torch.zeros(B, T, dtype=torch.bool)
    glob[0, [1, 5]] = True
    glob[1, 2] = True
    keep = torch.rand(B, H * 2, T, generator=torch.Generator().manual_seed(1)) > p  # [B, H*G, T], G = 2

    def fixed_dropout(probs, p, training):
        assert training
        return probs * keep / (1 - p)

    monkeypatch.setattr(F, "dropout", fixed_dropout)
    tokens = GlobalTokens.of(glob)
    got = global_rows_folded(x, tokens, q_global, k_global, v_global, H, padding, dropout_p=p)

    D = C // H
    heads = lambda t: t.view(*t.shape[:-1], H, D).transpose(-2, -3)  # noqa: E731  [..., n, C] -> [..., H, n, D]
    keys, values = heads(k_global(x.transpose(0, 1))), heads(v_global(x.transpose(0, 1)))  # [B, H, T, D]
    expected = []
    for b, position in zip(tokens.batch.tolist(), tokens.position.tolist()):
        g = tokens.index[b].tolist().index(position)
        query = q_global(x[position, b]).view(H, 1, D) * D ** -0.5
        scores = (query @ keys[b].transpose(-1, -2))[:, 0]  # [H, T]
        probs = torch.softmax(scores.masked_fill(padding[b], float("-inf")), dim=-1)
        probs = probs * keep[b].view(H, 2, T)[:, g] / (1 - p)
        expected.append((probs[:, None] @ values[b])[:, 0].reshape(C))  # [H, D] -> [C]
    torch.testing.assert_close(got, torch.stack(expected))


def test_the_global_path_asks_the_host_once_per_forward_not_per_layer(model_dir):
    """Data-dependent host syncs (``bool``/``nonzero``/``item``...) of the encoder and its layers, with the
    dense op (which has none of its own): the same count for 1 layer as for 2."""
    from torch.overrides import TorchFunctionMode

    syncing = {"__bool__", "nonzero", "item", "tolist", "__int__", "__float__"}

    class CountSyncs(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            CountSyncs.count += getattr(func, "__name__", "") in syncing
            return func(*args, **(kwargs or {}))

    model = rf.load_longformer(model_dir).eval()
    for layer in model.encoder.sentence_encoder.layers:
        layer.self_attn.backend = "dense"
    tokens, global_mask, _ = _batch()
    counts = []
    for n_layers in (2, 1):
        del model.encoder.sentence_encoder.layers[n_layers:]
        CountSyncs.count = 0
        with torch.no_grad(), CountSyncs():
            _features(model, tokens, global_mask)
        counts.append(CountSyncs.count)
    assert counts[0] == counts[1] and counts[0] <= 3, counts
