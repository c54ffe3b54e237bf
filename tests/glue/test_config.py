"""cramming_simple/glue/config.py: the shipped protocols parse and validate; a typo lists the valid keys."""

from __future__ import annotations

import pytest

from cramming_simple.cli import main
from cramming_simple.config import ConfigError, merge_typed
from cramming_simple.glue.config import Protocol, load_protocol
from cramming_simple.glue.tasks import TASKS, TaskTable, load_tasks
from cramming_simple.presets import shipped


def test_every_shipped_yaml_parses_and_validates():
    table = load_tasks()
    assert set(TASKS) <= set(table.tasks)
    assert table.tasks["mnli"].splits == ["validation_matched", "validation_mismatched"]
    assert table.tasks["mnli"].tsv.label_map == {"entailment": 0, "neutral": 1, "contradiction": 2}
    assert table.tasks["stsb"].regression and table.tasks["stsb"].num_labels == 1
    presets = sorted(p.stem for p in shipped("glue").glob("*.yaml") if p.stem != "tasks")
    assert presets == ["cramming", "paper", "published", "smoke", "smoke-published"]
    loaded = {name: load_protocol(name)[1] for name in presets}
    paper = loaded["paper"]
    assert paper == Protocol()  # the dataclass defaults are the paper's protocol, so partial presets inherit it
    assert (paper.epochs, paper.batch_size, paper.lr, paper.betas, paper.eps, paper.weight_decay) == (
        5,
        32,
        1.5e-4,
        (0.9, 0.98),
        1e-6,
        0.0,
    )
    assert (paper.schedule, paper.warmup, paper.max_length, paper.dropout, paper.seeds) == (
        "cosine",
        0.1,
        128,
        0.1,
        [1, 2, 3],
    )
    cramming = loaded["cramming"]
    assert (cramming.batch_size, cramming.lr) == (16, 4e-5) and cramming.epochs == 5 and cramming.betas == paper.betas
    smoke = loaded["smoke"]
    assert smoke.max_train_examples and smoke.max_eval_examples


def test_unknown_override_key_fails_listing_valid_keys(capsys):
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'.*batch_size.*lr"):
        load_protocol("paper", ["learning_rate=1e-4"])
    assert load_protocol("paper", ["lr=1e-4", "epochs=3"])[1].lr == 1e-4
    with pytest.raises(ConfigError, match="warmup"):
        load_protocol("smoke", ["warmup=1.5"])
    with pytest.raises(ConfigError, match="task table lacks"):
        merge_typed(TaskTable, None, [("t", {"tasks": {"cola": {"texts": ["sentence"], "metrics": ["accuracy"]}}})])
    assert main(["glue", "somewhere", "--protocol", "smoke", "epoch=3"]) == 2
    assert "Valid keys" in capsys.readouterr().err
