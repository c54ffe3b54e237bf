"""cramming_simple/model/diagnostics.py: the inside of the blocks at init: identity attention and rank collapse."""

from __future__ import annotations

import math

import pytest
import torch

from cramming_simple.model import BLOCKS, MaskedLM, arch_config
from cramming_simple.model.diagnostics import measure
from cramming_simple.model.layers import Attention

SHAPED = ["sas", "sasp", "sasp-nonorm", "vskipinit"]


@pytest.mark.parametrize("block", SHAPED)
def test_shaped_attention_is_the_identity_at_init_with_uniform_attention(block):
    cfg = arch_config("tiny")
    torch.manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (3, cfg.seq_len))
    measured = measure(MaskedLM(cfg, block), ids)
    assert len(measured["layers"]) == cfg.depth
    for layer in measured["layers"]:
        assert layer["attn_out_cos"] == pytest.approx(layer["attn_in_cos"], abs=1e-5)  # the sub-block is the identity
        assert layer["entropy"] == pytest.approx([math.log(cfg.seq_len)] * cfg.heads, abs=1e-5)  # W^Q = 0: uniform


def test_standard_attention_is_not_the_identity_at_init():
    cfg = arch_config("tiny")
    torch.manual_seed(0)
    measured = measure(MaskedLM(cfg, "preln"), torch.randint(5, cfg.vocab_size, (3, cfg.seq_len)))
    layer = measured["layers"][0]
    assert layer["attn_out_cos"] > layer["attn_in_cos"] + 0.3  # near-uniform attention averages tokens together
    assert all(h < math.log(cfg.seq_len) for h in layer["entropy"])


class NoSkip(torch.nn.Module):
    """Plain attention with no skip and no norm: the stack that collapses in rank with depth."""

    def __init__(self, cfg, layer):
        super().__init__()
        self.attn = Attention(cfg)

    def forward(self, x, mask):
        return self.attn(x, mask)


def test_a_stack_without_skips_collapses_with_depth_at_init_and_the_diagnostics_show_it(monkeypatch):
    from dataclasses import replace

    from cramming_simple.model.blocks import BlockSpec

    monkeypatch.setitem(BLOCKS, "noskip", BlockSpec(NoSkip, "no skip"))
    cfg = replace(arch_config("tiny"), depth=6)
    torch.manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (3, cfg.seq_len))
    collapsed = measure(MaskedLM(cfg, "noskip"), ids)
    cos = [collapsed["embedding"]["cos"]] + [layer["cos"] for layer in collapsed["layers"]]
    assert cos[0] < 0.5 and cos[1] > 0.99 and cos[-1] > 0.9999  # every token the same after one layer, and on
    assert all(b >= a - 1e-6 for a, b in zip(cos, cos[1:]))
    torch.manual_seed(0)
    kept = measure(MaskedLM(cfg, "sas"), ids)  # shaped attention through the same depth keeps its tokens apart
    assert max(layer["cos"] for layer in kept["layers"]) < 0.6
