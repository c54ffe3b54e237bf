"""cramming_simple/model/bert.py: the encoder against docs/blocks.md: sizes, padding, equations, heads, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.models import SHAPED, TINY, batch, ln, mlm_batch, perturb

from cramming_simple.model import (
    BLOCKS,
    IGNORE,
    Encoder,
    MaskedLM,
    SequenceClassifier,
    arch_config,
    count_params,
    set_fused,
)


@pytest.mark.parametrize("block", list(BLOCKS))
def test_fast_path_gradients_equal_reference_path(block):
    torch.manual_seed(0)
    model = MaskedLM(TINY, block)
    perturb(model)
    ids, mask, positions, labels = mlm_batch()

    def grads():
        model.zero_grad()
        loss = model(ids, positions, labels, mask)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast_loss, fast = grads()
    set_fused(model, False)
    slow_loss, slow = grads()
    assert torch.allclose(fast_loss, slow_loss, atol=1e-5)
    for name, g in fast.items():  # atol: the scalar gains' gradients nearly cancel (later norms are scale-free)
        assert torch.allclose(g, slow[name], rtol=1e-3, atol=1e-6), (name, (g - slow[name]).abs().max())


@pytest.mark.parametrize("block", list(BLOCKS))
def test_crammed_bert_parameter_counts_match_paper_table_1(block):
    with torch.device("meta"):
        counts = count_params(MaskedLM(arch_config("crammed-bert"), block))
    expected = 101e6 if block in SHAPED and block != "vskipinit" else 120e6
    assert abs(counts["params"] - expected) <= 0.5e6, counts
    # Of the 120M, about 25.2M is the embedding (docs/blocks.md).
    assert abs((counts["params"] - counts["non_embedding"]) - 25.2e6) < 0.1e6


def test_first_layer_norm_gives_the_no_norm_block_a_norm_in_layer_0_only():
    """arch.first_layer_norm (the official code's "always use LN in first layer"): parameter count + 2 x width."""
    from dataclasses import replace

    cfg = arch_config("crammed-bert")
    with torch.device("meta"):
        plain = MaskedLM(cfg, "sasp-nonorm")
        kept = MaskedLM(replace(cfg, first_layer_norm=True), "sasp-nonorm")
        others = {b: count_params(MaskedLM(replace(cfg, first_layer_norm=True), b)) for b in ("preln", "sasp")}
    assert count_params(kept)["params"] == count_params(plain)["params"] + 2 * cfg.width
    layers = kept.encoder.layers
    assert isinstance(layers[0].norm, torch.nn.LayerNorm) and not isinstance(layers[1].norm, torch.nn.LayerNorm)
    assert not isinstance(plain.encoder.layers[0].norm, torch.nn.LayerNorm)
    with torch.device("meta"):  # blocks that have norms anyway are unchanged
        assert others == {b: count_params(MaskedLM(cfg, b)) for b in ("preln", "sasp")}


@pytest.mark.parametrize("block", list(BLOCKS))
def test_padded_positions_do_not_change_valid_outputs(block):
    torch.manual_seed(0)
    enc = Encoder(TINY, block).eval()
    perturb(enc)
    ids, mask = batch()
    other = ids.clone()
    other[mask == 0] = torch.randint(5, 512, (int((mask == 0).sum()),))
    valid = mask.bool()
    with torch.no_grad():
        a, b = enc(ids, mask), enc(other, mask)
    assert torch.allclose(a[valid], b[valid], atol=1e-5)
    assert not torch.allclose(a[~valid], b[~valid])  # the change did reach the model


def test_embedding_and_final_norm_follow_spec():
    enc = Encoder(TINY, "preln").eval()
    perturb(enc)
    ids, _ = batch(pad_from=(16, 16, 16))
    with torch.no_grad():
        emb = enc.embedding
        T, d = ids.shape[1], TINY.width
        pos = torch.arange(T)[:, None] / torch.pow(10000.0, torch.arange(0, d, 2) / d)[None, :]
        table = torch.stack([pos.sin(), pos.cos()], dim=-1).reshape(T, d)  # interleaved sin, cos
        expected = ln(emb.tokens.weight[ids] + emb.position_scale * table, emb.norm)
        assert torch.allclose(emb(ids), expected, atol=1e-5)
        x = expected
        for layer in enc.layers:
            x = layer(x, None)
        assert torch.allclose(enc(ids), ln(x, enc.final_norm), atol=1e-5)
    fresh = Encoder(TINY, "preln").embedding
    assert math.isclose(fresh.position_scale.item(), TINY.width**-0.5, rel_tol=1e-6)
    assert torch.count_nonzero(fresh.tokens.weight[0]) == 0  # padding index 0


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("block", list(BLOCKS))
def test_fast_path_equals_reference_path(block, padded):
    torch.manual_seed(0)
    model = MaskedLM(TINY, block).eval()
    perturb(model)
    ids, mask = batch()
    mask = mask if padded else None
    with torch.no_grad():
        fast = model.logits(ids, mask)
        slow = set_fused(model, False).logits(ids, mask)
    valid = (mask if padded else torch.ones_like(ids)).bool()
    assert torch.allclose(fast[valid], slow[valid], atol=1e-4, rtol=1e-4)


def test_sparse_prediction_loss_equals_full_vocabulary_loss_at_masked_positions():
    torch.manual_seed(0)
    model = MaskedLM(TINY, "sas").eval()
    perturb(model)
    ids, _ = batch(pad_from=(16, 16, 16))
    g = torch.Generator().manual_seed(3)
    positions = torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(3)])  # (B, M)
    labels = ids.gather(1, positions)
    labels[2, 3] = IGNORE  # a row with fewer maskable tokens than M
    with torch.no_grad():
        sparse = model(ids, positions, labels)
        full = model.logits(ids)  # (B, T, V)
        dense_labels = torch.full_like(ids, IGNORE).scatter(1, positions, labels)
        reference = F.cross_entropy(full.flatten(0, 1), dense_labels.flatten(), ignore_index=IGNORE)
    assert torch.allclose(sparse, reference, atol=1e-5)


def test_sequence_head_classification_and_regression():
    torch.manual_seed(0)
    ids, mask = batch()
    clf = SequenceClassifier(TINY, "sasp", num_labels=3)
    logits, loss = clf(ids, mask, torch.tensor([0, 2, 1]))
    assert logits.shape == (3, 3)
    assert torch.allclose(loss, F.cross_entropy(logits, torch.tensor([0, 2, 1])))
    reg = SequenceClassifier(TINY, "sasp", num_labels=1)
    out, loss = reg(ids, mask, torch.tensor([0.5, 4.0, 2.5]))
    assert out.shape == (3, 1)
    assert torch.allclose(loss, F.mse_loss(out.squeeze(-1), torch.tensor([0.5, 4.0, 2.5])))


@pytest.mark.parametrize("block", list(BLOCKS))
def test_every_parameter_gets_a_gradient(block):
    """Every trainable parameter gets a non-zero gradient.

    At the exact init two gradients vanish by the maths, not by a bug: W^K (and K slices of fused weights)
    because W^Q = 0, and the first layer's beta_V because dW = 0. So: one backward at init, where
    everything else must be non-zero, one SGD step, then a second backward where everything must be.
    """
    torch.manual_seed(0)
    model = MaskedLM(TINY, block).train()
    ids, mask = batch()
    positions = torch.tensor([[1, 2, 3], [0, 4, 5], [1, 2, 4]])
    labels = ids.gather(1, positions)

    def backward():
        model.zero_grad()
        model(ids, positions, labels, mask).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    grads = backward()
    for name, grad in grads.items():
        assert grad is not None, name
        if name.endswith("value_beta"):
            continue
        if name.endswith(("attn.qk.weight", "w_in.weight")) and block in SHAPED:
            d = TINY.width
            assert torch.count_nonzero(grad[:d]) > 0, name  # W^Q gets gradient
            assert torch.count_nonzero(grad[2 * d :]) > 0 or grad.shape[0] == 2 * d, name  # MLP rows
            continue
        assert torch.count_nonzero(grad) > 0, name
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    for name, grad in backward().items():
        assert torch.count_nonzero(grad) > 0, name
        if name.endswith(("attn.qk.weight", "w_in.weight", "qkv.weight")):
            for i, part in enumerate(grad.split(TINY.width)):
                assert torch.count_nonzero(part) > 0, (name, i)
