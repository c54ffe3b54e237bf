"""cramming_simple/bench/profile.py: where a step spends its time, by kind of operator."""

from __future__ import annotations

import json

import pytest

from cramming_simple.cli import main


def test_bench_profile_says_where_a_step_spends_its_time(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--arch", "tiny", "--blocks", "preln", "--batch", "2", "--steps", "1", "--warmup", "0"]
    assert main([*args, "--device", "cpu", "--precision", "fp32", "--profile", "1", "--json", "--out", str(out)]) == 0
    profile = json.loads(capsys.readouterr().out)["profile"]["preln"]
    kinds = profile["kinds"]
    assert set(kinds) == {"matmul", "attention (SDPA)", "optimiser", "compiled kernels", "other"}
    assert sum(k["ms"] for k in kinds.values()) == pytest.approx(profile["ms_per_step"])
    assert sum(k["share"] for k in kinds.values()) == pytest.approx(1.0)
    assert kinds["matmul"]["ms"] > 0 and kinds["optimiser"]["ms"] > 0  # fp32 eager: aten::mm, the fused AdamW
    assert kinds["attention (SDPA)"]["ms"] > 0  # fp32 on CPU keeps SDPA
    assert profile["top"] and profile["top"][0]["ms"] >= profile["top"][-1]["ms"]
    md = (out / "bench.md").read_text()
    assert "## Where a step's time goes (torch.profiler)" in md and "Pre-LN: largest operators" in md


def test_profile_kinds_by_operator_name():
    from cramming_simple.bench.profile import kind_of

    assert kind_of("aten::mm") == kind_of("aten::bmm") == kind_of("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert kind_of("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention (SDPA)"
    assert kind_of("aten::_fused_adamw_") == kind_of("void at::native::multi_tensor_apply_kernel<>") == "optimiser"
    # fused kernels name the ops they fuse: they are compiled kernels, not softmax or attention
    assert (
        kind_of("graph_0_cpp_fused__softmax__to_copy_3")
        == kind_of("triton_per_fused_native_layer_norm_0")
        == ("compiled kernels")
    )
    assert kind_of("aten::copy_") == kind_of("aten::mm_backward_glue") == "other"
