"""The model zoo against docs/blocks.md: sizes, init identities, padding, equations, heads, save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cramming_simple.config import ConfigError
from cramming_simple.folders import load_model, save_model
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
from cramming_simple.model.blocks import SAS, SASP
from cramming_simple.model.layers import KeyMask, project
from cramming_simple.optim import param_groups

SHAPED = ["sas", "sasp", "sasp-nonorm", "vskipinit"]
TINY = arch_config("tiny", vocab_size=512)


def batch(B=3, T=16, vocab=512, pad_from=(16, 11, 5), seed=0):
    """Random ids (no pad ids at real positions) and an attention mask padding each row from pad_from[b]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, start in enumerate(pad_from):
        mask[b, start:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 1) -> None:
    """Move every parameter away from its init so that equation tests see general weights (W^Q != 0...)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 and p.std() > 0 else 1.0))


# ------------------------------------------------------------------------------------------ sizes


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


def test_first_layer_norm_survives_save_and_load(tmp_path):
    from dataclasses import replace

    model = MaskedLM(replace(arch_config("tiny"), first_layer_norm=True), "sasp-nonorm")
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.encoder.cfg.first_layer_norm and isinstance(loaded.encoder.layers[0].norm, torch.nn.LayerNorm)


# ------------------------------------------------------------------------------------------ init identities


def smha(block: torch.nn.Module, x: torch.Tensor, mask: KeyMask | None) -> torch.Tensor:
    """The shaped-attention sub-block of a block, applied to its (already normed) input x."""
    if isinstance(block, SASP):
        d = x.shape[-1]
        q, k, _ = project(x, block.w_in, [d, d, block.w_in.out_features - 2 * d], fused=True)
        return block.attn(x, mask, qk=(q, k))
    assert isinstance(block, SAS)
    return block.attn(x, mask)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("block", SHAPED)
def test_shaped_attention_is_identity_at_init(block, padded):
    torch.manual_seed(0)
    enc = Encoder(TINY, block).eval()
    ids, attention_mask = batch()
    mask = KeyMask.from_attention_mask(attention_mask if padded else None, torch.float32)
    x = torch.randn(3, 16, TINY.width)
    valid = attention_mask.bool() if padded else torch.ones(3, 16, dtype=torch.bool)
    for layer in enc.layers:
        out = smha(layer, x, mask)
        if block == "vskipinit":  # identity mixing, then the orthogonal W^V and W^P
            expected = x @ layer.attn.value.weight.T @ layer.attn.proj.weight.T
        else:
            expected = x
        err = (out - expected)[valid].abs().max().item()
        assert err < 1e-5, (block, err)


def test_query_weights_are_zero_and_gains_start_as_specified():
    for block in SHAPED:
        enc = Encoder(TINY, block)
        for i, layer in enumerate(enc.layers):
            wq = layer.w_in.weight[: TINY.width] if isinstance(layer, SASP) else layer.attn.qk.weight[: TINY.width]
            assert torch.count_nonzero(wq) == 0
            assert (
                torch.all(layer.attn.alpha == 1)
                and torch.all(layer.attn.beta == 1)
                and torch.all(layer.attn.gamma == 1)
            )
            assert layer.beta_sa.item() == 1.0 and math.isclose(layer.beta_ff.item(), 0.05, rel_tol=1e-6)
            has_value = hasattr(layer.attn, "value_delta")
            assert has_value == (i == 0 and block != "vskipinit")
            if has_value:
                assert torch.count_nonzero(layer.attn.value_delta) == 0
                assert layer.attn.value_alpha.item() == 1.0 and layer.attn.value_beta.item() == 1.0
            if block == "vskipinit":
                for w in (layer.attn.value.weight, layer.attn.proj.weight):
                    assert torch.allclose(w @ w.T, torch.eye(TINY.width), atol=1e-5)
        if block == "sas":
            assert all(layer.alpha_ff.item() == 1.0 for layer in enc.layers)


# ------------------------------------------------------------------------------------------ padding


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


# ------------------------------------------------------------------------------------------ equations
# An independent re-computation of every block straight from docs/blocks.md, one example and one head at a
# time, with explicit softmax and explicit C. It uses only the module's weights, none of its code.


def ln(x, m):
    return F.layer_norm(x, (x.shape[-1],), m.weight, m.bias, m.eps)


def softmax_attention(Xq, Xk, keep):
    """A = softmax(Q K^T / sqrt(dk) + M) for one head; keep: (T,) bool over keys."""
    logits = Xq @ Xk.T / math.sqrt(Xq.shape[-1])
    logits = logits + torch.where(keep, 0.0, float("-inf"))[None, :]
    return torch.softmax(logits, dim=-1)


def mha_ref(X, Wq, Wk, Wv, Wp, H, keep):
    dk = X.shape[1] // H
    heads = []
    for h in range(H):
        s = slice(h * dk, (h + 1) * dk)
        A = softmax_attention(X @ Wq[s].T, X @ Wk[s].T, keep)
        heads.append(A @ (X @ Wv[s].T))
    return torch.cat(heads, dim=1) @ Wp.T


def smha_ref(X, Wq, Wk, V, alpha, beta, gamma, H, keep, Wp=None):
    T, d = X.shape
    dk = d // H
    C = keep.float()[None, :].expand(T, T) / keep.sum()  # uniform over allowed keys
    heads = []
    for h in range(H):
        s = slice(h * dk, (h + 1) * dk)
        A = softmax_attention(X @ Wq[s].T, X @ Wk[s].T, keep)
        heads.append((alpha[h] * torch.eye(T) + beta[h] * A - gamma[h] * C) @ V[:, s])
    out = torch.cat(heads, dim=1)
    return out if Wp is None else out @ Wp.T


def mlp_ref(X, Wup, Wdown):
    h = X @ Wup.T
    f = h.shape[1] // 2
    return (h[:, :f] * F.gelu(h[:, f:])) @ Wdown.T


def value_ref(X, attn):
    if hasattr(attn, "value_delta"):
        W = attn.value_alpha * torch.eye(X.shape[1]) + attn.value_beta * attn.value_delta.T  # X W^V_1
        return X @ W
    if hasattr(attn, "value"):
        return X @ attn.value.weight.T
    return X


def block_ref(name, layer, X, keep, H):
    d = X.shape[1]
    if name in ("preln", "postln"):
        Wq, Wk, Wv = layer.attn.qkv.weight.split(d)
        Wp = layer.attn.proj.weight
        mha = lambda Z: mha_ref(Z, Wq, Wk, Wv, Wp, H, keep)  # noqa: E731
        mlp = lambda Z: mlp_ref(Z, layer.mlp.up.weight, layer.mlp.down.weight)  # noqa: E731
        if name == "preln":
            X1 = X + mha(ln(X, layer.norm1))
            return X1 + mlp(ln(X1, layer.norm2))
        X1 = ln(X + mha(X), layer.norm1)
        return ln(X1 + mlp(X1), layer.norm2)
    if name == "parallel":
        Wq, Wk, Wv, Wup = layer.w_in.weight.split([d, d, d, layer.w_in.out_features - 3 * d])
        Wp, Wdown = layer.w_out.weight.split([d, layer.w_out.in_features - d], dim=1)
        Z = ln(X, layer.norm)
        return X + mha_ref(Z, Wq, Wk, Wv, Wp, H, keep) + mlp_ref(Z, Wup, Wdown)
    a = layer.attn
    if name in ("sas", "vskipinit"):
        Z = ln(X, layer.norm1)
        Wq, Wk = a.qk.weight.split(d)
        Wp = a.proj.weight if name == "vskipinit" else None
        X1 = layer.beta_sa * smha_ref(Z, Wq, Wk, value_ref(Z, a), a.alpha, a.beta, a.gamma, H, keep, Wp)
        return layer.alpha_ff * X1 + layer.beta_ff * mlp_ref(
            ln(X1, layer.norm2), layer.mlp.up.weight, layer.mlp.down.weight
        )
    # sasp, sasp-nonorm
    Z = ln(X, layer.norm) if name == "sasp" else X
    Wq, Wk, Wup = layer.w_in.weight.split([d, d, layer.w_in.out_features - 2 * d])
    return layer.beta_sa * smha_ref(
        Z, Wq, Wk, value_ref(Z, a), a.alpha, a.beta, a.gamma, H, keep
    ) + layer.beta_ff * mlp_ref(Z, Wup, layer.down.weight)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("block", list(BLOCKS))
def test_block_forward_matches_spec_equations(block, padded):
    torch.manual_seed(0)
    enc = Encoder(TINY, block).eval()
    perturb(enc)  # general weights: W^Q != 0, gains != init, dW != 0
    X = torch.randn(3, 16, TINY.width)
    _, attention_mask = batch()
    if not padded:
        attention_mask = torch.ones_like(attention_mask)
    mask = KeyMask.from_attention_mask(attention_mask if padded else None, torch.float32)
    with torch.no_grad():
        for i, layer in enumerate(enc.layers):
            out = layer(X, mask)
            for b in range(X.shape[0]):
                keep = attention_mask[b].bool()
                ref = block_ref(block, layer, X[b], keep, TINY.heads)
                assert torch.allclose(out[b][keep], ref[keep], atol=1e-4, rtol=1e-4), (
                    block,
                    i,
                    b,
                    (out[b][keep] - ref[keep]).abs().max(),
                )


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


# ------------------------------------------------------------------------------------------ fast paths


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


# ------------------------------------------------------------------------------------------ heads


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


# ------------------------------------------------------------------------------------------ gradients


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


def test_param_groups_exclude_biases_norms_and_gains_from_weight_decay():
    model = SequenceClassifier(TINY, "sas", num_labels=2)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert all(n.endswith(("weight", "value_delta")) for n in decayed)
    for n in kept:
        assert "norm" in n or n.endswith(
            (
                "bias",
                "alpha",
                "beta",
                "gamma",
                "beta_sa",
                "alpha_ff",
                "beta_ff",
                "value_alpha",
                "value_beta",
                "position_scale",
            )
        ), n
    assert "encoder.layers.0.attn.value_delta" in decayed and "encoder.embedding.tokens.weight" in decayed


# ------------------------------------------------------------------------------------------ errors


def test_unknown_block_fails_with_the_valid_names():
    with pytest.raises(ConfigError) as err:
        Encoder(TINY, "preLN")
    for name in BLOCKS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"heads": 3}, "divide"),
        ({"width": 0}, "positive"),
        ({"depth": -1}, "positive"),
        ({"glu_width": 511}, "even"),
        ({"widht": 64}, "Valid keys"),
    ],
)
def test_bad_arch_configs_fail_at_construction(overrides, words):
    with pytest.raises(ConfigError) as err:
        arch_config("tiny", **overrides)
    assert words in str(err.value)


def test_unknown_arch_preset_lists_presets():
    with pytest.raises(ConfigError) as err:
        arch_config("huge")
    assert "crammed-bert" in str(err.value) and "tiny" in str(err.value)


# ------------------------------------------------------------------------------------------ save / load


@pytest.mark.parametrize("block", ["preln", "sasp", "vskipinit"])
def test_save_load_roundtrip(tmp_path, block):
    torch.manual_seed(0)
    model = MaskedLM(TINY, block).eval()
    perturb(model)
    ids, mask = batch()
    save_model(model, tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").exists() and (tmp_path / "model" / "config.json").exists()
    loaded = load_model(tmp_path / "model").eval()
    with torch.no_grad():
        assert torch.equal(model.logits(ids, mask), loaded.logits(ids, mask))
    clf = load_model(tmp_path / "model", num_labels=2, dropout=0.1)
    assert isinstance(clf, SequenceClassifier) and clf.encoder.cfg.dropout == 0.1
    assert torch.equal(clf.encoder.embedding.tokens.weight, model.encoder.embedding.tokens.weight)


def test_compiled_state_dict_with_orig_mod_prefix_loads(tmp_path):
    torch.manual_seed(0)
    model = MaskedLM(TINY, "sas").eval()
    perturb(model)
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    fresh = MaskedLM(TINY, "sas").eval()
    from cramming_simple.folders.io import load_encoder_state

    load_encoder_state(fresh, state)
    ids, _ = batch(pad_from=(16, 16, 16))
    with torch.no_grad():
        assert torch.equal(model.logits(ids), fresh.logits(ids))
    # and through the safetensors file, as a compiled model's weights would be written by other tools
    from safetensors.torch import save_file

    save_model(model, tmp_path / "m")
    save_file(
        {f"_orig_mod.{k}": v.contiguous() for k, v in model.encoder.state_dict().items()},
        str(tmp_path / "m" / "model.safetensors"),
    )
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m").logits(ids), model.logits(ids))
