"""cramming_simple/model/layers.py: the attention paths (CPU bf16 and SDPA) and dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cramming_simple.model import arch_config
from cramming_simple.model.layers import Attention, KeyMask, ShapedAttention, attend, shaped_attend


def heads(seed: int, dtype: torch.dtype, B=3, H=2, T=16, dk=8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, dk, generator=g).to(dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("padded", [False, True])
def test_the_cpu_bf16_attention_path_equals_sdpa(padded):
    """On CPU in bf16 `attend` takes two batched matmuls around an fp32 softmax, not SDPA: outputs and
    gradients agree with SDPA's on the same bf16 inputs, to bf16 rounding."""
    rows = torch.tensor([[1] * 16, [1] * 11 + [0] * 5, [1] * 7 + [0] * 9])
    mask = KeyMask.from_attention_mask(rows, torch.bfloat16) if padded else None
    mask32 = KeyMask.from_attention_mask(rows, torch.float32) if padded else None
    q, k, v = heads(0, torch.bfloat16)
    out = attend(q, k, v, mask, fused=True)
    grads = torch.autograd.grad((out.float() ** 2).sum(), (q, k, v))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=None if mask is None else mask.allow)
    ref_grads = torch.autograd.grad((ref**2).sum(), (q32, k32, v32))
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=2e-2, rtol=2e-2)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g.float(), r, atol=5e-2, rtol=5e-2), (g.float() - r).abs().max()
    gains = [torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.7]), torch.tensor([0.2, 0.3])]
    fast = shaped_attend(q, k, v, *gains, mask, fused=True)
    slow = shaped_attend(q.float(), k.float(), v.float(), *gains, mask32, fused=False)
    assert torch.allclose(fast.float(), slow, atol=2e-2, rtol=2e-2)


def test_fp32_keeps_sdpa_and_cpu_bf16_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(a[0].dtype) or a[2])
    q, k, v = heads(1, torch.float32)
    attend(q, k, v, None, fused=True)
    attend(*heads(1, torch.bfloat16), None, fused=True)
    assert calls == [torch.float32]  # bf16 on CPU did not call SDPA


@pytest.mark.parametrize("fused", [True, False])
def test_attention_dropout_acts_in_training_mode_only(fused):
    cfg = arch_config("tiny", attention_dropout=0.5)
    torch.manual_seed(0)
    x, mask = torch.randn(2, 16, 128), KeyMask.from_attention_mask(torch.ones(2, 16), torch.float32)
    attn = Attention(cfg)
    attn.fused = fused
    plain = Attention(arch_config("tiny"))
    plain.load_state_dict(attn.state_dict())
    plain.fused = fused
    attn.eval()
    assert torch.allclose(attn(x, mask), plain(x, mask), atol=1e-6)
    attn.train()
    assert not torch.allclose(attn(x, mask), plain(x, mask), atol=1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_shaped_attention_drops_only_its_attention_term(fused):
    cfg = arch_config("tiny", attention_dropout=0.5)
    torch.manual_seed(0)
    x = torch.randn(2, 16, 128)
    shaped = ShapedAttention(cfg, "identity")
    with torch.no_grad():
        shaped.qk.weight.normal_()  # non-uniform attention
    shaped.fused = fused
    plain = ShapedAttention(arch_config("tiny"), "identity")
    plain.load_state_dict(shaped.state_dict())
    plain.fused = fused
    shaped.eval()
    reference = shaped(x, None)
    assert torch.allclose(reference, plain(x, None), atol=1e-6)  # scoring: no dropout
    shaped.train()
    assert not torch.allclose(shaped(x, None), reference, atol=1e-3)
    with torch.no_grad():
        shaped.beta.zero_()  # no attention term left: alpha I - gamma C is not attention and is never dropped
    kept = shaped(x, None)
    shaped.eval()
    assert torch.allclose(kept, shaped(x, None), atol=1e-6)
