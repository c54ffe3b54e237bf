"""`cramming-simple bench` at tiny size, its FLOP count and Hugging Face peer, and the model's fast paths."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cramming_simple.bench import (
    Contender,
    block_contender,
    hf_config,
    hf_contender,
    make_batch,
    peak_tflops,
    render,
    result_row,
)
from cramming_simple.cli import main
from cramming_simple.model import BLOCKS, IGNORE, MaskedLM, arch_config, count_params, set_fused
from cramming_simple.optim import make_optimizer, param_groups
from cramming_simple.runtime import compile_model

TINY = arch_config("tiny", vocab_size=512)


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """General weights (W^Q != 0, gains != init), as in test_model.py."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 and p.std() > 0 else 1.0))


def mlm_batch(B=3, T=16, M=4, seed=0):
    """Ids, a padding mask (rows end at 16, 11, 7), M masked positions per row inside the real tokens, labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, end in enumerate((16, 11, 7)[:B]):
        mask[b, end:] = 0
    positions = torch.stack([torch.randperm(7, generator=g)[:M] for _ in range(B)])
    return ids.masked_fill(mask == 0, 0), mask, positions, ids.gather(1, positions)


# ------------------------------------------------------------------------------------------ the command


def test_bench_runs_end_to_end_and_writes_its_reports(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "--arch",
            "tiny",
            "--blocks",
            "sasp,parallel",
            "--batch",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--peer",
            "hf",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((out / "bench.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["preln", "sasp", "parallel", "hf-bert"]  # the reference is always timed, first
    assert rows["preln"]["ratio_vs_preln"] == 1.0
    cfg = arch_config("tiny")
    for name, r in rows.items():
        assert r["tokens_per_s"] > 0 and r["steps_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["tflops"] > 0, r
        assert r["tokens_per_s"] == pytest.approx(r["steps_per_s"] * 2 * cfg.seq_len)
        assert r["ratio_vs_preln"] == pytest.approx(r["tokens_per_s"] / rows["preln"]["tokens_per_s"])
        assert len(r["step_s"]) == 2 and r["mfu"] is None  # no MFU on CPU
        if name != "hf-bert":
            with torch.device("meta"):
                assert r["params"] == count_params(MaskedLM(cfg, name))["params"]
    assert rows["sasp"]["params"] < rows["preln"]["params"]
    assert rows["sasp"]["flops_per_step"] < rows["preln"]["flops_per_step"] < rows["hf-bert"]["flops_per_step"]
    assert result["settings"]["batch"] == 2 and result["settings"]["masked"] == 32 and result["device_type"] == "cpu"
    md = (out / "bench.md").read_text()
    for text in (
        "| block |",
        "Pre-LN",
        "SAS-P",
        "Parallel",
        "Hugging Face BERT",
        "FLOPs per step",
        "batch 2 x 128",
        "torch",
    ):
        assert text in md, text


def test_unknown_block_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "--arch", "tiny", "--blocks", "preln,sasq", "--out", str(tmp_path)]) == 2
    assert "sasp" in capsys.readouterr().err  # the valid names are listed


def test_synthetic_batch_masks_exactly_a_quarter_of_every_row():
    data = make_batch(TINY, 5, torch.device("cpu"), seed=0)
    assert data.input_ids.shape == (5, 128) and data.positions.shape == (5, 32)
    for row in data.positions:
        assert len(set(row.tolist())) == 32 and torch.equal(row, row.sort().values)
    assert torch.equal(data.labels, data.input_ids.gather(1, data.positions))
    dense = data.dense_labels()
    assert ((dense != IGNORE).sum(dim=1) == 32).all()
    assert torch.equal(dense.gather(1, data.positions), data.labels)


# ------------------------------------------------------------------------------------------ FLOPs, peer, peaks


def test_flop_count_matches_a_hand_count():
    d, T, L, V, G, M, B = 128, 128, 2, 512, 512, 32, 2  # TINY, batch 2, 32 of 128 tokens masked
    mlp = d * G + (G // 2) * d  # GLU: up (d -> G), down (G/2 -> d)
    weights = {  # matrices every token passes through, all layers
        "preln": L * (3 * d * d + d * d + mlp),  # QKV, W^P, MLP
        "parallel": L * ((3 * d + G) * d + (d + G // 2) * d),  # [QKV | up], [W^P | down]
        "sas": L * (2 * d * d + mlp) + d * d,  # QK, MLP; layer 0's value matrix dW
        "sasp": L * ((2 * d + G) * d + (G // 2) * d) + d * d,
        "vskipinit": L * (2 * d * d + 2 * d * d + mlp),  # QK, W^V, W^P, MLP
    }
    attention = L * (2 * T * T * d + 2 * T * T * d)  # Q K^T and A V, all heads
    data = make_batch(TINY, B, torch.device("cpu"), seed=0)
    for block, n in weights.items():
        forward = 2 * T * n + attention + 2 * M * d * V  # sparse decoder: M positions
        assert block_contender(block, TINY, data, torch.device("cpu")).flops == 3 * B * forward, block
    assert block_contender("preln", TINY, data, torch.device("cpu")).flops == 629_145_600  # the sum, worked out once
    I = 3 * G // 4  # noqa: E741 - BERT's FFN width
    hf_weights = L * (4 * d * d + 2 * d * I) + d * d  # Q, K, V, O, FFN; the MLM head's dense transform
    forward = 2 * T * hf_weights + attention + 2 * T * d * V  # dense decoder: all T positions
    assert hf_contender(TINY, data, torch.device("cpu")).flops == 3 * B * forward


def test_hf_peer_has_our_parameter_count():
    cfg = arch_config("crammed-bert")
    from transformers import BertForMaskedLM

    with torch.device("meta"):
        ours = MaskedLM(cfg, "preln")
        hf = BertForMaskedLM(hf_config(cfg))
    assert hf.config.intermediate_size == 2304 and hf.config.hidden_dropout_prob == 0.0
    assert hf.config._attn_implementation == "sdpa"
    # FFN sized to our GLU exactly (weights); the rest differs only by BERT's biases, learned positions,
    # token types and MLM transform.
    layer = hf.bert.encoder.layer[0]
    assert (
        layer.intermediate.dense.weight.numel() + layer.output.dense.weight.numel()
        == ours.encoder.layers[0].mlp.up.weight.numel() + ours.encoder.layers[0].mlp.down.weight.numel()
    )
    n_hf, n_ours = sum(p.numel() for p in hf.parameters()), count_params(ours)["params"]
    assert abs(n_hf - n_ours) / n_ours < 0.01, (n_hf, n_ours)


def test_gpu_report_shows_mfu():
    """The CUDA rendering path, without a GPU: MFU = achieved TFLOP/s over the device's peak."""
    model = torch.nn.Linear(4, 4)
    c = Contender(
        "preln",
        "Pre-LN",
        model,
        lambda m: m.weight.sum(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        flops=989e12 * 0.05,
    )
    c.times, c.peak_bytes = [0.1, 0.1, 0.1], 2**30
    row = result_row(c, tokens_per_step=128 * 128, peak=989.0, paper={"preln": 1.0})
    assert row["tflops"] == pytest.approx(494.5) and row["mfu"] == pytest.approx(0.5) and row["peak_mem_mb"] == 1024
    row["ratio_vs_preln"] = 1.0
    settings = {
        "arch": "crammed-bert",
        "batch": 128,
        "seq_len": 128,
        "masked": 32,
        "steps": 3,
        "warmup": 1,
        "compile": True,
        "precision": "bfloat16",
        "threads": 16,
    }
    md = render(
        {
            "rows": [row],
            "device": "NVIDIA H100 80GB HBM3",
            "device_type": "cuda",
            "date": "today",
            "settings": settings,
            "environment": {"torch": "2.x"},
            "peak_mem_method": "cuda",
            "notes": [],
        }
    )
    assert "| MFU |" in md and "| 50.0% |" in md and "494" in md


def test_mfu_peaks_by_device_name():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA RTX A6000") == 155.0
    assert peak_tflops("NVIDIA GeForce RTX 4090") == 165.0
    assert peak_tflops("NVIDIA GeForce GTX 1080") is None


# ------------------------------------------------------------------------------------------ fast paths


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


def inductor_unavailable() -> str | None:
    try:
        import torch._inductor  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return f"torch inductor unavailable: {err}"
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("gcc")):
        return "torch.compile on CPU needs a C++ compiler (g++), none on PATH"
    return None


@pytest.mark.parametrize("padded", [False, True])
def test_every_block_compiles_to_one_graph(padded):
    """Graph breaks split the compiled step into pieces with eager glue between them; there must be none."""
    import torch._dynamo

    ids, mask, positions, labels = mlm_batch()
    for block in BLOCKS:
        explained = torch._dynamo.explain(MaskedLM(TINY, block))(ids, positions, labels, mask if padded else None)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (block, explained.break_reasons)


@pytest.mark.skipif(inductor_unavailable() is not None, reason=inductor_unavailable() or "")
def test_compiled_model_equals_eager_on_cpu():
    cfg = arch_config("tiny", vocab_size=512, depth=1)
    torch.manual_seed(0)
    model = MaskedLM(cfg, "sasp")
    perturb(model)
    ids, _, positions, labels = mlm_batch()
    compiled, ok = compile_model(model, True)
    assert ok

    def run(m):
        model.zero_grad()
        loss = m(ids, positions, labels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = run(model)
    compiled_loss, compiled_grads = run(compiled)
    assert torch.allclose(compiled_loss, eager_loss, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_bench_data_times_the_data_path_against_the_training_step(smoke_cache, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "--data",
            "--budget",
            "smoke",
            f"data.cache_dir={smoke_cache}",
            "train.microbatch=8",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((out / "bench_data.json").read_text()) and (out / "bench_data.md").exists()
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["produce", "deliver", "train"] and rows["train"]["x_train_step"] == 1.0
    for r in rows.values():
        assert r["seconds"] > 0 and r["tokens_per_s"] == pytest.approx(8 * 128 / r["seconds"])
        assert r["x_train_step"] == pytest.approx(rows["train"]["seconds"] / r["seconds"])
    assert result["settings"]["microbatch"] == 8 and result["settings"]["arch"] == "tiny"


def test_overrides_without_data_are_a_user_error(tmp_path, capsys):
    assert main(["bench", "--arch", "tiny", "train.microbatch=8", "--out", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err


def test_a_compiled_module_that_fails_at_its_first_call_falls_back_to_eager_once(monkeypatch):
    from cramming_simple import runtime

    eager = torch.nn.Linear(2, 2)

    def broken(x):  # stands in for a compiled module whose first call (the real compile) fails
        raise RuntimeError("inductor failed")

    monkeypatch.setattr(runtime, "compile_model", lambda model, enabled: (broken, True))
    resets = []
    runner = runtime.CompiledModule(eager, True, "m", reset=lambda: resets.append(1))
    x = torch.ones(1, 2)
    with pytest.warns(UserWarning, match="m: torch.compile failed at the first step"):
        out = runner.run(lambda module, scale: module(x) * scale, 2.0)
    assert torch.equal(out, eager(x) * 2.0) and resets == [1] and not runner.compiled and runner.module is eager
    runner.run(lambda module: module(x))  # later calls run eager, with no new warning or reset
    assert resets == [1]
