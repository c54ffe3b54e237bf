"""cramming_simple/train/budget.py: budgets in hours of a reference device (docs/recipe.md, "Budgets on other
hardware"): the hours a calibration gives, the data they size, resumes, sweeps."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from helpers.references import HOLDOUT, HOURS
from helpers.runs import summary
from omegaconf import OmegaConf

from cramming_simple.cli import main
from cramming_simple.data import prepared_path
from cramming_simple.runs import CALIBRATION_DIR
from cramming_simple.train.budget import data_passes_note, moved_device
from cramming_simple.train.config import PretrainConfig

RECORDED = {"name", "source", "reference_rate", "local_rate", "rate_low", "rate_high", "local_hours", "device", "date"}


def test_a_reference_at_twice_the_local_rate_gives_twice_the_hours_and_they_are_recorded(double, reference_run):
    s, config = summary(reference_run), OmegaConf.load(reference_run / "config.yaml")
    ref = s["reference"]
    assert RECORDED <= set(ref) and RECORDED <= set(config.reference)
    assert ref["name"] == "double" and ref["local_hours"] == config.reference.local_hours
    assert ref["reference_rate"] == pytest.approx(2 * double["saved"].preln_microbatches_per_s)
    # hours here = reference hours x reference rate / local rate, within the rate's interval
    assert ref["local_hours"] == pytest.approx(s["budget_hours"] * ref["reference_rate"] / ref["local_rate"], rel=1e-9)
    low, high = (s["budget_hours"] * ref["reference_rate"] / r for r in (ref["rate_high"], ref["rate_low"]))
    assert low <= ref["local_hours"] <= high
    # the same machine measured twice: twice the rate is about twice the hours (the rates agree within the noise)
    assert 1.4 < ref["local_hours"] / s["budget_hours"] < 2.9
    assert s["completed"] and s["elapsed_s"] == pytest.approx(ref["local_hours"] * 3600, abs=1.5)
    assert ref["local_device"] == s["device"] and ref["calibration"]["rounds"] >= 2


def test_the_data_is_sized_by_the_reference_budget_and_says_so(double, reference_run, capsys):
    cfg = PretrainConfig.from_budget(
        "smoke", "sasp", [HOURS, HOLDOUT, f"data.cache_dir={double['cache']}"], reference=str(double["path"])
    )
    ref = cfg.reference  # Pre-LN's sequences in the budget x 1.5, plus the held-out rows: no calibration needed
    expected = -(-0.0004 * 3600 * ref.reference_rate * 32 * 1.5 // 1) + 64
    assert cfg.data.max_sequences == ref.data_sequences == expected
    assert main(["data", "--budget", "smoke", "--reference", str(double["path"]), HOURS, HOLDOUT, cfg_cache(cfg)]) == 0
    assert "not the whole source" in capsys.readouterr().out
    path = prepared_path(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["sequences"] == expected  # what the run prepared and read (every block: one preparation)
    assert summary(reference_run)["data"]["hash"] == path.name
    assert data_passes_note(cfg, manifest["sequences"]) is None  # sized: no row is read twice
    reads = 0.0004 * 3600 * ref.reference_rate * 32  # a source of 100 rows (10 held out): passes over 90
    assert f"{reads / 90:.1f} passes over these 90 training sequences" in data_passes_note(cfg, 100)


def cfg_cache(cfg: PretrainConfig) -> str:
    return f"data.cache_dir={cfg.data.cache_dir}"


def test_a_sweeps_runs_share_one_calibration(sweep_runs):
    runs, jobs, _ = sweep_runs
    assert [j.name for j in jobs] == ["preln-smoke-double-s0", "sasp-smoke-double-s0"]
    assert all("--calibration-dir" in j.argv and "--reference" in j.argv for j in jobs)
    refs = [summary(runs / j.name)["reference"] for j in jobs]
    assert len(list((runs / CALIBRATION_DIR).glob("*.json"))) == 1
    assert refs[0]["local_hours"] == refs[1]["local_hours"] and refs[0]["date"] == refs[1]["date"]
    assert refs[0]["calibration"]["file"] == refs[1]["calibration"]["file"]


def test_a_run_of_plain_hours_projects_at_its_own_rate_and_warns_of_its_cap_once(smoke_cache, tmp_path):
    err = io.StringIO()
    args = ["pretrain", "--block", "preln", "--budget", "smoke", "--runs-dir", str(tmp_path), "hours=0.004"]
    with contextlib.redirect_stderr(err):
        code = main([*args, "train.max_microbatches=20", "impl.log_seconds=0.25", f"data.cache_dir={smoke_cache}"])
    assert code == 0, err.getvalue()
    s = summary(tmp_path / "preln-smoke")  # a tenth of its 14.4 s budget in, its own rate projects past the cap
    said = err.getvalue()
    assert said.count("train.max_microbatches=20 will stop this run at about p = ") == 1, said
    assert "(its own rate from" in said and s["stop_reason"] == "max_microbatches"
    assert 0 < s["capped_at_p"] < 0.9 and s["projected_microbatch_steps"] > 20


def test_a_resumed_reference_run_keeps_its_calibration_and_rescales_extended_hours(
    double, reference_run, tmp_path, capsys
):
    recorded = summary(reference_run)["reference"]
    cfg = PretrainConfig.from_run(reference_run)
    assert cfg.reference.calibrated and cfg.reference.local_hours == recorded["local_hours"]
    assert cfg.budget_s == recorded["local_hours"] * 3600  # no second calibration: the same hours
    longer = PretrainConfig.from_run(reference_run, ["hours=0.0008"], extend_budget=True)
    assert longer.reference.local_rate == recorded["local_rate"]
    assert longer.reference.local_hours == pytest.approx(2 * recorded["local_hours"])
    assert "reference.local_hours" in longer.amendments[-1]["changes"]
    assert moved_device(cfg, recorded["local_device"]) is None
    moved = moved_device(cfg, "NVIDIA A100-SXM4-80GB")  # a requeue onto another GPU model keeps the hours, warned
    assert f"calibrated on {recorded['local_device']}" in moved and "keeps those hours" in moved
    args = ["pretrain", "--resume", "--name", reference_run.name, "--runs-dir", str(reference_run.parent)]
    other = tmp_path / "other.yaml"
    other.write_text(double["path"].read_text().replace("name: double", "name: other"))
    assert main([*args, "--budget", "smoke", "--reference", str(other)]) == 2
    assert "a resumed run keeps its budget" in capsys.readouterr().err
