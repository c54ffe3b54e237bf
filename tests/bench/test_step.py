"""cramming_simple/bench/step.py: the timed step (the trainer's own), its rounds and stopping rule, the Hugging Face
peer."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cramming_simple.bench import (
    Contender,
    block_contender,
    hf_config,
    make_batch,
)
from cramming_simple.bench.step import Rounds, time_rounds
from cramming_simple.model import MaskedLM, arch_config, count_params

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_the_bench_times_the_trainers_step_with_clipping(monkeypatch):
    from cramming_simple.model import arch_config
    from cramming_simple.train.config import TrainConfig

    cfg = arch_config("tiny", vocab_size=512)
    data = make_batch(cfg, 2, torch.device("cpu"), seed=0)
    c: Contender = block_contender("sas", cfg, data, torch.device("cpu"))
    c.prepare(None, torch.device("cpu"), False)
    clipped = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, m: clipped.append(m) or real(p, m))
    before = [p.detach().clone() for p in c.eager.parameters()]
    c.step()
    assert clipped == [TrainConfig().grad_clip]  # the recipe's clipping, as pretraining does it
    assert any(not torch.equal(a, b) for a, b in zip(before, c.eager.parameters()))  # and the update ran
    assert all(p.grad is None for p in c.eager.parameters())  # zero_grad(set_to_none) as the trainer
