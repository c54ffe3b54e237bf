"""cramming_simple/optim.py: parameter groups, the fused optimizer, the name rule for weight decay."""

from __future__ import annotations

import pytest
import torch
from helpers.models import TINY, mlm_batch

from cramming_simple.model import (
    BLOCKS,
    MaskedLM,
    SequenceClassifier,
    arch_config,
)
from cramming_simple.optim import decays, make_optimizer, param_groups


def test_make_optimizer_is_fused_adamw_with_spec_groups():
    model = MaskedLM(TINY, "sas")
    opt = make_optimizer(model, lr=3e-3, weight_decay=0.1, device="cpu")
    assert opt.defaults["fused"] and opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-12
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    # one fused step equals one step of the plain for-loop AdamW
    twin = MaskedLM(TINY, "sas")
    twin.load_state_dict(model.state_dict())
    plain = torch.optim.AdamW(param_groups(twin, 0.1), lr=3e-3, betas=(0.9, 0.98), eps=1e-12, foreach=False)
    ids, mask, positions, labels = mlm_batch()
    for m, o in ((model, opt), (twin, plain)):
        m(ids, positions, labels, mask).backward()
        o.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


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


@pytest.mark.parametrize("block", list(BLOCKS))
def test_the_name_rule_decays_the_position_scale_and_nothing_else_differs(block):
    model = MaskedLM(arch_config("tiny", first_layer_norm=True), block)
    differ = [n for n, p in model.named_parameters() if decays(n, p, "ndim") != decays(n, p, "names")]
    assert differ == ["encoder.embedding.position_scale"]
    assert decays("encoder.embedding.position_scale", model.encoder.embedding.position_scale, "names")


@pytest.mark.parametrize("rule, shrinks", [("ndim", False), ("names", True)])
def test_an_optimizer_step_decays_the_position_scale_only_under_the_name_rule(rule, shrinks):
    model = MaskedLM(arch_config("tiny"), "sas")
    scale, gain = model.encoder.embedding.position_scale, model.encoder.layers[1].beta_ff
    before = scale.item(), gain.item()
    opt = make_optimizer(model, lr=0.1, weight_decay=0.5, decay_rule=rule)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert (scale.item() < before[0]) == shrinks and gain.item() == before[1]  # gains never decay
