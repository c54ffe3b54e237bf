"""Budgets in hours of a reference device (docs/recipe.md, "Budgets on other hardware"): the shipped references and
their derivations, the calibration and the hours it gives, what is refused, data sized to the budget, a sweep's
shared calibration, the report's budget lines and its refusal to mix budgets, and no silent cap."""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cramming_simple import runtime
from cramming_simple.cli import main
from cramming_simple.config import ConfigError
from cramming_simple.data import prepared_path
from cramming_simple.hardware import USER_ENV, find_reference, parse, save_reference, shipped_references
from cramming_simple.reference import PUBLISHED_REFERENCE
from cramming_simple.report import tables
from cramming_simple.report.load import load_runs, replicates
from cramming_simple.runs import CALIBRATION_DIR
from cramming_simple.sweep import SweepConfig, plan
from cramming_simple.train.budget import data_passes_note, moved_device
from cramming_simple.train.clock import EVAL, BudgetClock
from cramming_simple.train.config import PretrainConfig
from cramming_simple.train.projection import Projection
from cramming_simple.train.schedules import microbatches_per_update
from cramming_simple.train.state import TrainState

FAST = ["impl.device=cpu", "impl.calibration_seconds=1"]  # a short calibration: a few rounds
HOURS = "hours=0.0004"  # reference hours: about 3 s here at twice the local rate
HOLDOUT = "data.holdout=64"
RECORDED = {"name", "source", "reference_rate", "local_rate", "rate_low", "rate_high", "local_hours", "device", "date"}


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# ----------------------------------------------------------------------------------------------- the references


def test_the_shipped_references_parse_and_agree_with_their_derivations():
    refs = shipped_references()
    assert PUBLISHED_REFERENCE in refs and "rtx3090-notrainnogain" in refs
    for ref in refs.values():
        assert ref.source and ref.derivation and ref.date and ref.arch == "crammed-bert" and ref.seq_len == 128
    ntng = refs["rtx3090-notrainnogain"]  # 0.2253 s per microbatch of 128 (NoTrainNoGain's saved_rsts.py)
    assert ntng.preln_microbatches_per_s == pytest.approx(1 / 0.2253, abs=1e-4) and not ntng.estimate
    he = refs[PUBLISHED_REFERENCE]  # about 600K steps for the fastest block (1.20x Pre-LN) in 24 h, microbatch 64
    assert he.preln_microbatches_per_s == pytest.approx(600_000 / 1.20 / 86_400, abs=1e-3)
    assert he.estimate and he.microbatch == 64
    with pytest.raises(ConfigError, match="Valid keys"):  # a typo in an entry fails at load, naming the fields
        parse({"name": "x", "device": "gpu", "source": "me", "rate": 1.0}, "an entry")


def test_a_reference_measured_at_another_arch_or_microbatch_is_refused_in_one_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    base = ["pretrain", "--block", "preln", "--runs-dir", str(runs)]
    assert main([*base, "--budget", "smoke", "--reference", "rtx3090-notrainnogain"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "measured at arch crammed-bert (the budget's: tiny)" in err[0]
    assert main([*base, "--budget", "24h", "--reference", PUBLISHED_REFERENCE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "microbatch 64 (the budget's: 128)" in err[0] and "train.microbatch=64" in err[0]
    assert main([*base, "--budget", "smoke", "--reference", "no-such-gpu"]) == 2
    assert "unknown reference 'no-such-gpu'" in capsys.readouterr().err and not runs.exists()
    cfg = PretrainConfig.from_budget("24h", "sas", ["train.microbatch=64"], reference=PUBLISHED_REFERENCE)
    assert cfg.name == f"sas-24h-{PUBLISHED_REFERENCE}" and cfg.reference.reference_rate == pytest.approx(5.787)


# ----------------------------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    """This machine calibrated and saved as a reference (`calibrate --save --json`), and a reference at twice its
    rate: its budget's hours are about twice as many hours here."""
    root = tmp_path_factory.mktemp("references")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(USER_ENV, str(root / "saved"))
        out = root / "calibrate.json"
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert main(["calibrate", "--budget", "smoke", "--save", "here", "--json", *FAST]) == 0
        out.write_text(buffer.getvalue())
        saved = find_reference("here")
    entry = json.loads(out.read_text())
    path = root / "double.yaml"  # (its budget's data goes to a cache of its own: other tests count the session's)
    values = {**entry, "name": "double", "preln_microbatches_per_s": 2 * saved.preln_microbatches_per_s}
    del values["rate_low"], values["rate_high"]
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(values)))
    return {"entry": entry, "saved": saved, "path": path, "folder": root / "saved", "cache": root / "cache"}


def test_calibrate_measures_pre_ln_with_its_interval_and_saves_it_as_a_reference(double, monkeypatch):
    entry, saved = double["entry"], double["saved"]
    fields = {"name", "device", "preln_microbatches_per_s", "arch", "microbatch", "seq_len", "precision", "compiled"}
    assert fields | {"source", "date", "rate_low", "rate_high"} <= set(entry)
    assert entry["rate_low"] <= entry["preln_microbatches_per_s"] <= entry["rate_high"]
    # auto precision: bf16 where the CPU multiplies bf16 natively (AVX-512 BF16, AMX), else fp32
    here = runtime.precision_name(runtime.autocast_dtype(torch.device("cpu"), "auto"))
    assert (saved.name, saved.arch, saved.microbatch, saved.precision) == ("here", "tiny", 32, here)
    assert saved.preln_microbatches_per_s == entry["preln_microbatches_per_s"]
    monkeypatch.setenv(USER_ENV, str(double["folder"]))
    with pytest.raises(ConfigError, match="a shipped reference has that name"):
        save_reference(shipped_references()[PUBLISHED_REFERENCE])
    assert microbatches_per_update(128, 8192) == 20  # the 24h budget's timed round: 20 microbatches, one update


@pytest.fixture(scope="module")
def reference_run(double, tmp_path_factory):
    """A smoke run whose budget is in hours of the `double` reference (data sized to that budget)."""
    root = tmp_path_factory.mktemp("reference-run")
    runs, cache = root / "runs", f"data.cache_dir={double['cache']}"
    args = ["pretrain", "--block", "preln", "--budget", "smoke", "--runs-dir", str(runs), "--reference"]
    assert main([*args, str(double["path"]), HOURS, HOLDOUT, cache, "impl.log_seconds=1", *FAST]) == 0
    return runs / "preln-smoke-double"


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


@pytest.fixture(scope="module")
def sweep_runs(double, tmp_path_factory):
    """A sweep of Pre-LN and SAS-P on the `double` reference budget, capped at 4 microbatch steps: far below what the
    calibration projects (2.88 x the saved rate), so both warn before their first step and stop at equal steps."""
    runs = tmp_path_factory.mktemp("sweep") / "runs"
    over = [HOURS, HOLDOUT, f"data.cache_dir={double['cache']}", "train.max_microbatches=4", *FAST]
    cfg = SweepConfig(
        ["preln", "sasp"], [0], "smoke", runs, "smoke", "rte", overrides=over, reference=str(double["path"])
    )
    jobs, errors = [j for j in plan(cfg) if j.kind == "pretrain"], {}
    for job in jobs:  # the sweep's own command lines, run here (the launchers run them in a child process)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(job.argv) == 0, err.getvalue()
        errors[job.name] = err.getvalue()
    return runs, jobs, errors


def test_a_sweeps_runs_share_one_calibration(sweep_runs):
    runs, jobs, _ = sweep_runs
    assert [j.name for j in jobs] == ["preln-smoke-double-s0", "sasp-smoke-double-s0"]
    assert all("--calibration-dir" in j.argv and "--reference" in j.argv for j in jobs)
    refs = [summary(runs / j.name)["reference"] for j in jobs]
    assert len(list((runs / CALIBRATION_DIR).glob("*.json"))) == 1
    assert refs[0]["local_hours"] == refs[1]["local_hours"] and refs[0]["date"] == refs[1]["date"]
    assert refs[0]["calibration"]["file"] == refs[1]["calibration"]["file"]


# ----------------------------------------------------------------------------------------------- no silent cap


def test_a_capped_run_warns_once_records_where_it_stopped_and_table_1_marks_it(sweep_runs):
    runs, jobs, errors = sweep_runs
    for job in jobs:
        s = summary(runs / job.name)
        assert errors[job.name].count("train.max_microbatches=4 will stop this run at about p = ") == 1
        assert (
            "(the calibration's Pre-LN rate" in errors[job.name] and "train.max_microbatches=null" in errors[job.name]
        )
        assert s["stop_reason"] == "max_microbatches" and s["microbatch_steps"] == 4
        assert 0 < s["capped_at_p"] < 0.9 and s["projected_microbatch_steps"] > 4
    loaded = load_runs([runs / j.name for j in jobs])
    groups, _ = replicates(loaded.runs, loaded.glue)
    table = tables.table1(groups, loaded.problems, None)
    rows = table.data.set_index("block")
    preln, sasp = (summary(runs / j.name) for j in jobs)
    # equal steps, so the step ratio would read 1.00: the speed is the training rate's ratio
    rate = (sasp["microbatch_steps"] / sasp["elapsed_s"]) / (preln["microbatch_steps"] / preln["elapsed_s"])
    assert rows.loc["sasp", "speed"] == pytest.approx(rate, rel=1e-6)
    assert rows.loc["sasp", "capped_at_p"] == pytest.approx(sasp["capped_at_p"])
    assert all("(capped)" in cell for cell in table.shown["Run"])
    assert any(n.startswith("sasp-smoke-double-s0 was capped: train.max_microbatches stopped it") for n in table.notes)


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


# ----------------------------------------------------------------------------------------------- the report


def test_the_report_names_each_budget_and_refuses_to_mix_budgets_without_the_flag(
    reference_run, pretrained_run, capsys
):
    out = reference_run.parent.parent / "report"
    mixed = [str(reference_run), str(pretrained_run)]  # 0.0004 h on the `double` reference, and plain hours
    assert main(["report", *mixed, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different budget references" in err[0] and "--mixed-budgets" in err[0]
    assert main(["report", *mixed, "--out", str(out), "--mixed-budgets"]) == 0
    assert "budgets mixed (--mixed-budgets)" in (out / "table1.md").read_text()
    line = next(r for r in (out / "index.md").read_text().splitlines() if "preln-smoke-double" in r)
    here = summary(reference_run)["reference"]["local_hours"]
    assert re.search(rf"0\.0004 h on cpu .* = {here:.3g} h \[[0-9.]+, [0-9.]+\] on cpu .*reference double", line)


# ----------------------------------------------------------------------------------------------- the clock


def test_the_clock_reads_its_hours_from_the_config_and_alone_advances_the_timers(double):
    cfg = PretrainConfig.from_budget("smoke", "preln", [HOURS], reference=str(double["path"]))
    with pytest.raises(ConfigError, match="not calibrated yet"):
        BudgetClock.for_run(cfg, TrainState())
    cfg.reference.local_hours = 0.5  # as a calibration sets it
    state = TrainState(elapsed_s=10.0, eval_s=2.0)
    clock = BudgetClock.for_run(cfg, state)
    assert clock.budget_s == cfg.budget_s == 1800.0 and clock.spent == 10.0
    clock.start()
    with clock.paused(EVAL):
        time.sleep(0.05)
    with clock.paused():  # a checkpoint: outside the budget, not evaluation
        time.sleep(0.05)
    clock.stamp(state)
    assert state.eval_s == pytest.approx(2.05, abs=0.03) and 10.0 <= state.elapsed_s < 10.05


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


def test_the_projection_warns_of_a_cap_once_and_says_how_often_the_data_will_be_read():
    cfg = PretrainConfig.from_budget("smoke", "preln", ["train.max_microbatches=500"])
    warned, said = [], []
    projection = Projection(cfg.train, 1_000, 1, warned.append, said.append)
    clock_cfg = PretrainConfig.from_budget("smoke", "preln", [f"hours={40 / 3600!r}", "impl.log_seconds=1"])
    clock, state = BudgetClock(clock_cfg), TrainState(microbatch_steps=100)
    clock.agree(3.125)  # 100 steps of 1/32 s: 36.875 s more make 1,180 steps more by p = 1
    state.projected_steps = projection(state, clock, 1 / 32, "a test rate")
    assert projection(state, clock, 1 / 32, "a test rate") == state.projected_steps  # the trainer records it
    assert state.projected_steps == 1_280 and len(warned) == 1
    # 400 steps more stop it at p = (3.125 + 12.5) / 40 = 0.39, its LR at 0.25 + p = 0.64 of its peak
    assert "will stop this run at about p = 0.39" in warned[0] and "0.64 of its peak" in warned[0]
    assert said == [
        "data: at this rate the run reads about 40,960 sequences, about 41.0 passes over its 1,000 training sequences"
    ]


def test_the_own_rate_projection_waits_for_the_steps_after_compile():
    """Seen on an H200: a compiled run's first 2 steps took 4.2 s, then 34 per second. A projection from the
    step-time EMA at the first log point said 6 steps for a run that made 605; it now takes the rate between two
    log points after the compiled steps."""
    cfg = PretrainConfig.from_budget("smoke", "preln", [])
    projection = Projection(cfg.train, 10**6, 1, [].append, [].append)
    clock_cfg = PretrainConfig.from_budget("smoke", "preln", [f"hours={21.6 / 3600!r}", "impl.log_seconds=4"])
    clock, state = BudgetClock(clock_cfg), TrainState()
    now = 0.0

    def train_until(log_at: float, step_s: float) -> None:
        nonlocal now
        while now + step_s <= log_at:
            now += step_s
            state.step_time_s = clock.tick(state.step_time_s, now)
            state.microbatch_steps += 1
            clock.agree(now)
        state.projected_steps = projection.after_log(state, clock, now) or state.projected_steps

    train_until(4.2, 2.1)  # compile: two steps, a log point past a tenth of the budget
    assert state.projected_steps is None
    train_until(8.2, 1 / 34)  # the first log point after compile: marked
    assert state.projected_steps is None
    train_until(12.2, 1 / 34)
    assert state.projected_steps == pytest.approx(state.microbatch_steps + (21.6 - now) * 34, rel=0.01)
