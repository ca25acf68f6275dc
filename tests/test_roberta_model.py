"""longformer_roberta model: global-attention batch invariance, backends agree, gradient checkpointing,
DistributedDataParallel without --find-unused-parameters, task-provided global masks."""

import pytest
import torch
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


def test_global_queries_are_projected_only_where_the_op_reads_them():
    """The module projects Qg at the global tokens only; the result and the gradients are those of the
    op fed the full projection (what the module computed before)."""
    from fairseq_longformer.modules.layout import merge_heads, split_heads
    from fairseq_longformer.modules.longformer_self_attention import (
        GLOBAL_PROJECTIONS, LOCAL_PROJECTIONS, LongformerSelfAttention)
    from triton_kernels import longformer_attention

    attention = LongformerSelfAttention(16, 4, attention_window=4, backend="dense").double()
    x = torch.randn(13, 2, 16, dtype=torch.float64, requires_grad=True)
    padding = torch.zeros(2, 13, dtype=torch.bool)
    padding[1, 10:] = True
    glob = torch.zeros(2, 13, dtype=torch.bool)
    glob[0, [0, 7]] = True
    glob[1, 3] = True
    upstream = torch.randn(13, 2, 16, dtype=torch.float64)

    def gradients(out):
        params = [x, attention.q_global.weight, attention.k_global.weight, attention.q_proj.weight]
        return torch.autograd.grad((out * upstream).sum(), params)

    got = attention(x, key_padding_mask=padding, global_mask=glob)
    projections = {n: split_heads(getattr(attention, n)(x), 4) for n in LOCAL_PROJECTIONS + GLOBAL_PROJECTIONS}
    expected = attention.out_proj(merge_heads(longformer_attention(
        *(projections[n] for n in LOCAL_PROJECTIONS), 4, key_padding_mask=padding, global_mask=glob,
        backend="dense", **{n: projections[n] for n in GLOBAL_PROJECTIONS})))
    torch.testing.assert_close(got, expected)
    for a, b in zip(gradients(got), gradients(expected)):
        torch.testing.assert_close(a, b)


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
