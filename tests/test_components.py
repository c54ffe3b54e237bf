"""The rooms of the rebuilt house, each on its own: the checkpointer's fallback, speed ratios with intervals
and the rule that stops the bench, GLUE from Python through its typed config, and the one output path."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.glue_data import FAST, copy_run

from cramming_simple.bench.intervals import estimates, paired_ratios, precise_enough, ratio_interval
from cramming_simple.bench.step import Rounds, time_rounds
from cramming_simple.cli import main
from cramming_simple.config import ConfigError
from cramming_simple.runs import GLUE, glue_predictions, glue_result
from cramming_simple.train.checkpoint import Checkpointer
from cramming_simple.train.distributed import Dist
from cramming_simple.train.state import TrainState

# tiny models run fastest on one thread, and CI's two cores are shared with the spawned GLUE workers
pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------------------------- checkpointer


def test_the_checkpointer_restores_the_previous_generation_when_the_newest_is_damaged(tmp_path):
    def parts():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    model, optimizer = parts()
    dist = Dist()
    writer = Checkpointer(tmp_path, dist, {"model": model, "optimizer": optimizer}, {"block": "preln"})
    for step in (4, 8):
        with torch.no_grad():
            model.weight.fill_(step)
        writer.save({**TrainState().__dict__, "microbatch_steps": step}, {"microbatch_steps": step})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"microbatch_steps": 8}
    assert writer.unchanged(8) and not writer.unchanged(9)
    (tmp_path / "checkpoint.pt").write_bytes(b"truncated")

    said = []
    model2, optimizer2 = parts()
    reader = Checkpointer(
        tmp_path, dist, {"model": model2, "optimizer": optimizer2}, {}, state_type=TrainState, warn=said.append
    )
    ckpt = reader.restore()
    assert isinstance(ckpt["state"], TrainState) and ckpt["state"].microbatch_steps == 4 and ckpt["block"] == "preln"
    assert torch.all(model2.weight == 4) and reader.saved_step == 4 and reader.exists
    assert not reader.keep_previous and "resumed from checkpoint.prev.pt" in said[0]  # the good prev stays
    assert Checkpointer(tmp_path / "empty", dist, {"model": model2}, {}).restore() is None


# ----------------------------------------------------------------------------------------------- speed


def test_the_paired_ratio_and_its_interval_cover_the_true_ratio():
    rng = np.random.default_rng(0)
    drift = rng.uniform(1.0, 1.6, size=60)  # the machine's speed changes from round to round, for both alike
    base = list(0.10 * drift * rng.normal(1, 0.02, 60))
    block = list(0.10 / 1.25 * drift * rng.normal(1, 0.02, 60))
    assert np.median(paired_ratios(base, block)) == pytest.approx(1.25, rel=0.02)
    interval = ratio_interval(paired_ratios(base, block))
    assert interval.low < 1.25 < interval.high and interval.high - interval.low < 0.05
    # unpaired, the drift would swamp it: the ratio of the medians moves with the drift's draw
    few = ratio_interval(paired_ratios(base[:5], block[:5]))
    assert few.high - few.low > interval.high - interval.low  # fewer rounds, a wider interval
    e = estimates({"preln": base, "sas": block}, "preln")
    assert e["preln"] == {"ratio": 1.0, "low": 1.0, "high": 1.0, "half_width": 0.0, "rounds": 60}
    assert e["sas"]["low"] < e["sas"]["ratio"] < e["sas"]["high"] and e["sas"]["rounds"] == 60
    assert precise_enough({"preln": base, "sas": block}, "preln", 0.05)
    assert not precise_enough({"preln": base[:5], "sas": block[:5]}, "preln", 0.001)
    assert np.isnan(ratio_interval(paired_ratios(base[:1], block[:1])).low)  # one round: no interval


class Sleeper:
    """A contender whose step sleeps: `spread` adds noise to it."""

    def __init__(self, name: str, seconds: float, spread: float = 0.0, seed: int = 0):
        self.name, self.seconds, self.spread, self.times, self.peak_bytes = name, seconds, spread, [], 0
        self.rng = np.random.default_rng(seed)

    def step(self) -> None:
        time.sleep(self.seconds * (1 + self.spread * self.rng.random()))


def test_the_bench_adds_rounds_until_the_target_or_the_time_cap():
    cpu = torch.device("cpu")
    steady = [Sleeper("preln", 0.004), Sleeper("sas", 0.002)]
    assert time_rounds(steady, Rounds(warmup=1, steps=3), cpu) == "rounds"
    assert [len(c.times) for c in steady] == [3, 3]  # a fixed number: exactly that many, warm-up not kept
    steady = [Sleeper("preln", 0.004), Sleeper("sas", 0.002)]
    assert time_rounds(steady, Rounds(0, 3, target=0.5, max_seconds=30), cpu) == "target"
    assert len(steady[0].times) >= 3
    noisy = [Sleeper("preln", 0.002, spread=3.0, seed=1), Sleeper("sas", 0.002, spread=3.0, seed=2)]
    started = time.perf_counter()
    assert time_rounds(noisy, Rounds(0, 3, target=1e-6, max_seconds=0.3), cpu) == "time cap"
    assert 0.3 <= time.perf_counter() - started < 5 and len(noisy[0].times) > 3


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


# ----------------------------------------------------------------------------------------------- GLUE from Python


def test_glue_runs_from_python_through_its_typed_config(pretrained_run, glue_dir, tmp_path):
    from cramming_simple.glue.run import GlueRun, run

    folder = copy_run(pretrained_run, tmp_path)
    config = GlueRun.from_options(
        folder, protocol="smoke", overrides=[*FAST, "impl.tracker=none"], tasks="rte", seeds="3", data_dir=str(glue_dir)
    )
    assert config.trackers == [] and config.overrides == tuple(FAST) and config.protocol.seeds == [3]
    assert config.tasks == ["rte"] and config.model_dir == folder / "model" and config.glue_name == GLUE
    assert run(config) == 0
    record = json.loads(glue_result(folder / GLUE, "rte", 3).read_text())
    assert record["status"] == "ok" and record["invocation"]["overrides"] == FAST
    assert glue_predictions(glue_result(folder / GLUE, "rte", 3)).exists()
    with pytest.raises(ConfigError, match="impl.tracker"):
        GlueRun.from_options(folder, protocol="smoke", overrides=["impl.threads=2"])
    with pytest.raises(ConfigError, match="lrr"):
        GlueRun.from_options(folder, protocol="smoke", overrides=["lrr=1e-4"])
    with pytest.raises(TypeError):  # options by name only: no positional bools
        GlueRun.from_options(folder, "smoke")


# ----------------------------------------------------------------------------------------------- one output path


def test_python_warnings_print_as_the_librarys_own(capsys):
    from cramming_simple.console import route_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        route_warnings()
        warnings.warn("model: torch.compile failed at the first step; running eager", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.startswith("warning: model: torch.compile failed at the first step; running eager (UserWarning, ")
    assert err.count("\n") == 1  # one line, no source excerpt


def test_a_result_file_is_named_in_one_place(tmp_path):
    assert glue_result(Path("r/glue"), "rte", 2) == Path("r/glue/rte/seed2.json")
    assert glue_predictions(Path("r/glue/rte/seed2.json")) == Path("r/glue/rte/seed2.predictions.npz")


def test_a_run_records_a_hardware_segment_whenever_a_session_starts_elsewhere():
    from cramming_simple.train.state import TrainState

    state = TrainState()
    state.trains_on("NVIDIA A100-SXM4-80GB", "gpu07")
    state.microbatch_steps = 500
    state.trains_on("NVIDIA A100-SXM4-80GB", "gpu07")  # a resume on the same node: nothing new
    state.trains_on("NVIDIA A100-SXM4-80GB", "gpu09")
    state.microbatch_steps = 900
    state.trains_on("NVIDIA H100 80GB HBM3", "gpu12")
    assert [(h["node"], h["from_step"]) for h in state.hardware] == [("gpu07", 0), ("gpu09", 500), ("gpu12", 900)]
    older = {k: v for k, v in asdict(state).items() if k != "hardware"}  # a checkpoint from before the field
    assert TrainState(**older).hardware == []
