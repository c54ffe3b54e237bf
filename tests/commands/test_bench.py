"""cramming_simple/commands/bench.py: `cramming-simple bench` end to end at tiny size, its reports and its user
errors."""

from __future__ import annotations

import json

import pytest
import torch

from cramming_simple.bench import (
    block_contender,
    make_batch,
)
from cramming_simple.bench.flops import Gemm
from cramming_simple.cli import main
from cramming_simple.model import MaskedLM, arch_config, count_params

pytestmark = pytest.mark.usefixtures("one_thread")


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
    for r in rows.values():  # the matmul ceiling, measured in the same run
        assert r["ceiling_tflops"] > 0 and r["ceiling_s"] > 0, r
        assert r["matmul_efficiency"] == pytest.approx(r["ceiling_s"] / r["step_s_median"])
        assert r["matmul_efficiency"] == pytest.approx(r["tflops"] / r["ceiling_tflops"])
    shapes = result["ceiling_shapes"]
    assert shapes and all(s["s_median"] > 0 and s["tflops"] > 0 and s["repeats"] >= 1 for s in shapes)
    data = make_batch(cfg, 2, torch.device("cpu"), seed=0)
    wanted = set(block_contender("sasp", cfg, data, torch.device("cpu")).gemms)
    assert wanted <= {Gemm(s["m"], s["k"], s["n"], s["batch"]) for s in shapes}  # every product of every row
    assert result["settings"]["batch"] == 2 and result["settings"]["masked"] == 32 and result["device_type"] == "cpu"
    md = (out / "bench.md").read_text()
    for text in (
        "| block |",
        "Pre-LN",
        "SAS-P",
        "Parallel",
        "Hugging Face BERT",
        "FLOPs per step",
        "| ceiling |",
        "| matmul eff. |",
        "ceiling: TFLOP/s of the same step's matrix products",
        "batch 2 x 128",
        "torch",
    ):
        assert text in md, text


def test_unknown_block_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "--arch", "tiny", "--blocks", "preln,sasq", "--out", str(tmp_path)]) == 2
    assert "sasp" in capsys.readouterr().err  # the valid names are listed


def test_overrides_without_data_are_a_user_error(tmp_path, capsys):
    assert main(["bench", "--arch", "tiny", "train.microbatch=8", "--out", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err


def test_bench_reports_intervals_and_report_cites_them(tmp_path, capsys, pretrained_run):
    out = tmp_path / "bench"
    args = ["bench", "--arch", "tiny", "--blocks", "sasp", "--batch", "2", "--warmup", "1", "--steps", "3"]
    code = main(
        [*args, "--precision-target", "0.5", "--max-minutes", "0.5", "--device", "cpu", "--json"]
        + [
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    s = result["settings"]
    assert s["stopped_by"] in ("target", "time cap") and s["precision_target"] == 0.5 and s["steps"] >= 3
    sasp = result["rows"][1]
    assert sasp["paired_low"] <= sasp["paired_ratio"] <= sasp["paired_high"]
    assert result["rows"][0]["paired_ratio"] == 1.0
    md = (out / "bench.md").read_text()
    assert f"{sasp['paired_ratio']:.2f} [{sasp['paired_low']:.2f}, {sasp['paired_high']:.2f}]" in md
    assert "half-width was below 0.5" in md and "paired ratio" in md

    report = tmp_path / "report"
    assert main(["report", str(pretrained_run), "--out", str(report), "--bench", str(out / "bench.json")]) == 0
    table1 = (report / "table1.md").read_text()
    assert "measured side by side in one process" in table1
    assert f"SAS-P {sasp['paired_ratio']:.2f} [{sasp['paired_low']:.2f}, {sasp['paired_high']:.2f}]" in table1
    capsys.readouterr()
    assert main(["report", str(pretrained_run), "--out", str(report), "--bench", str(tmp_path / "none.json")]) == 2
    assert "--bench" in capsys.readouterr().err
