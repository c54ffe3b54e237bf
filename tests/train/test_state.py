"""cramming_simple/train/state.py: hardware segments of a run."""

from __future__ import annotations

from dataclasses import asdict

from cramming_simple.train.state import TrainState


def test_a_run_records_a_hardware_segment_whenever_a_session_starts_elsewhere():

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
