"""cramming_simple/model/blocks.py: each block's forward against the spec's equations, and its init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.blocks import EXAMPLES
from helpers.models import SHAPED, TINY, batch, ln, perturb

from cramming_simple.model import (
    BLOCKS,
    Encoder,
    MaskedLM,
)
from cramming_simple.model.blocks import SAS, SASP
from cramming_simple.model.layers import KeyMask, project


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


def test_the_rezero_example_is_the_identity_at_init():
    model = MaskedLM(TINY, f"{EXAMPLES}/rezero.py:ReZero")
    x = torch.randn(2, 8, TINY.width)
    assert torch.equal(model.encoder.layers[0](x, None), x)
