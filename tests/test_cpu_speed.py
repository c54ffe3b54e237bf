"""What makes CPU runs fast, and that it changes no numbers beyond their precision: bf16 where the CPU has it,
the CPU attention path, the allocator setting, the CPU compile options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cramming_simple import runtime
from cramming_simple.data import MicrobatchStream, MLMCollator, PackedData, Split, load_tokenizer
from cramming_simple.model import MaskedLM, arch_config
from cramming_simple.model.layers import KeyMask, attend, shaped_attend
from cramming_simple.optim import make_optimizer

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------------------------- bf16 on CPU


@pytest.mark.parametrize(
    "amx, avx512_bf16, expected",
    [(True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, None)],
)
def test_auto_precision_on_cpu_follows_the_detected_bf16_support(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(runtime.device.platform, "machine", lambda: "x86_64")
    assert runtime.cpu_has_bf16() == (expected is not None)
    assert runtime.autocast_dtype(CPU, "auto") is expected
    assert runtime.autocast_dtype(CPU, "fp32") is None and runtime.autocast_dtype(CPU, "bf16") is torch.bfloat16
    assert runtime.autocast_dtype(torch.device("cuda"), "auto") is torch.bfloat16  # CUDA: always bf16


def test_arm_cpus_are_asked_through_their_feature_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(runtime.device.platform, "machine", lambda: "aarch64")
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(runtime.device, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else runtime.device.Path(p))
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert runtime.cpu_has_bf16()
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert not runtime.cpu_has_bf16()


def mlm_microbatches(cache, n: int, batch: int) -> list[dict]:
    """The first `n` microbatches of the smoke budget's real text, masked as pretraining masks them."""
    data = PackedData(next(p for p in cache.iterdir() if p.is_dir() and (p / "tokenizer").exists()))
    collate = MLMCollator.for_tokenizer(load_tokenizer(data.root / "tokenizer"), 128, 0.25, seed=0)
    stream = MicrobatchStream(data, collate, batch, seed=0, split=Split.of(data, 0))
    return [stream(b) for b in range(n)]


@pytest.mark.slow  # 50 s: bf16 emulated on CPU; the op-level rule: test_the_cpu_bf16_attention_path_equals_sdpa
def test_a_bf16_smoke_run_learns_as_the_fp32_run_does(smoke_cache):
    """Same model, data and steps, once in bf16 autocast and once in fp32: the MLM losses stay close.

    Tolerance: the mean loss of the last 10 of 40 steps of 8 sequences within 2 % (seen here: 6.648 against 6.637,
    0.2 %; with 16 sequences, 6.696 against 6.688), and both runs learn (the loss falls by more than 15 % from the
    first step: 8.918 to 6.64). Batch 8 halves the test's time: bf16 is emulated on CPUs without native bf16.
    bf16 keeps fp32 weights, optimiser and loss (autocast only changes the matmuls' inputs), so more than that would
    be a bug, not rounding.
    """
    batches = mlm_microbatches(smoke_cache, 40, 8)
    cfg = arch_config("tiny", vocab_size=len(load_tokenizer(next(smoke_cache.iterdir()) / "tokenizer")))
    losses = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = MaskedLM(cfg, "preln").train()
        optimizer = make_optimizer(model, 2e-3, 0.01, device=CPU)
        curve = []
        for batch in batches:
            with runtime.autocast(CPU, dtype):
                loss = model(**batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            curve.append(loss.item())
        losses[dtype] = curve
    fp32, bf16 = (torch.tensor(losses[d][-10:]).mean().item() for d in (None, torch.bfloat16))
    assert abs(bf16 - fp32) / fp32 < 0.02, (fp32, bf16)
    for curve in losses.values():
        assert torch.tensor(curve[-10:]).mean() < 0.85 * curve[0], curve


# ----------------------------------------------------------------------------------------------- attention


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


# ----------------------------------------------------------------------------------------------- allocator, compile


FAULTS = """
import resource, sys, torch
from cramming_simple import runtime
from cramming_simple.bench import block_contender, make_batch
from cramming_simple.model import arch_config
if sys.argv[1] == "cpu-run":
    runtime.pick_device("cpu")  # what every CPU run calls
cfg, cpu = arch_config("tiny"), torch.device("cpu")
step = block_contender("preln", cfg, make_batch(cfg, 32, cpu, 0), cpu)
step.prepare(None, cpu, False)
for i in range(4):
    if i == 2:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step.step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 2)
"""


@pytest.mark.slow  # 20 s: two fresh processes; the setting itself: runtime.keep_freed_memory
def test_cpu_runs_keep_freed_memory_for_reuse():
    """Page faults per training step (tiny, batch 32), after two steps: glibc's defaults give freed memory back
    and fault it in again every step; a CPU run keeps it (seen here: 33,311 against 4,097). Each count in a
    fresh process: the allocator's state depends on the process's history."""
    import subprocess
    import sys

    if sys.platform != "linux" or not runtime.keep_freed_memory():
        pytest.skip("glibc's mallopt is not available here")

    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
        return int(run.stdout)

    default, cpu_run = faults("default"), faults("cpu-run")
    assert cpu_run < default / 4, (cpu_run, default)


def test_cpu_compile_turns_off_the_pattern_matcher_that_undoes_the_attention_path(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.update(kwargs) or model)
    runtime.compile_model(torch.nn.Linear(2, 2), True)
    assert seen == {"options": runtime.CPU_COMPILE_OPTIONS} and runtime.CPU_COMPILE_OPTIONS["pattern_matcher"] is False
    seen.clear()
    with torch.device("meta"):  # not a CPU model: inductor's defaults
        runtime.compile_model(torch.nn.Linear(2, 2), True)
    assert seen == {}
