"""cramming_simple/profiles.py: the two recipes: every switch with both values, and the shipped profiles."""

from __future__ import annotations

import dataclasses
import json

import pytest
from omegaconf import OmegaConf

from cramming_simple.glue.config import load_protocol, protocol_hash, protocol_values
from cramming_simple.presets import CHECKOUT
from cramming_simple.profiles import SWITCHES, profile_of, switches
from cramming_simple.train.config import PretrainConfig


def as_dict(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in values.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


@pytest.mark.parametrize("clean, published", [("24h", "24h-published"), ("smoke", "smoke-published")])
def test_a_published_budget_differs_from_its_clean_twin_in_exactly_the_switches(clean, published):
    a, b = (flat(as_dict(PretrainConfig.from_budget(name, "sasp-nonorm"))) for name in (clean, published))
    differ = {k for k in a if a[k] != b[k]} - {"budget", "name"}
    assert differ == {s.key for s in switches("pretrain")}
    assert profile_of("pretrain", as_dict(PretrainConfig.from_budget(clean, "sas"))) == "clean"
    assert profile_of("pretrain", as_dict(PretrainConfig.from_budget(published, "sas"))) == "published"


@pytest.mark.parametrize("clean, published", [("paper", "published"), ("smoke", "smoke-published")])
def test_a_published_glue_protocol_differs_from_its_clean_twin_in_exactly_the_switches(clean, published):
    a, b = (dataclasses.asdict(load_protocol(name)[1]) for name in (clean, published))
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {s.key for s in switches("glue")}
    assert profile_of("glue", a) == "clean" and profile_of("glue", b) == "published"


def test_a_mixed_setting_names_the_switches_that_differ_from_the_clean_recipe():
    cfg = PretrainConfig.from_budget("24h", "sas", ["train.masking=cramming", "data.order=stored"])
    assert profile_of("pretrain", as_dict(cfg)) == "mixed (data.order=stored, train.masking=cramming)"
    assert profile_of("pretrain", {}) == "clean"  # a config from before the switches: the clean behaviour


def test_glue_protocol_hashes_of_older_versions_are_unchanged_so_stored_results_are_reused():
    # the hashes every result stored before the switches existed carries (they decide reuse)
    assert {p: protocol_hash(load_protocol(p)[1]) for p in ("paper", "smoke", "cramming")} == {
        "paper": "78bd6b623b91",
        "smoke": "06bb287156ba",
        "cramming": "eba49db62a55",
    }
    published = protocol_values(load_protocol("published")[1])
    assert published["head_width"] == 1024 and published["warmup_task"] == "cola"


def test_the_docs_table_lists_every_switch_with_both_values():
    text = (CHECKOUT / "docs" / "recipe.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")}

    def shown(value) -> str:  # as YAML writes it
        if value is None or isinstance(value, bool):
            return {None: "null", True: "true", False: "false"}[value]
        return str(value)

    for s in SWITCHES:
        assert s.key in rows, f"docs/recipe.md has no row for {s.key}"
        cells = [c.strip() for c in rows[s.key].split("|")]
        assert f"`{shown(s.clean)}`" in cells[2] and f"`{shown(s.published)}`" in cells[3], rows[s.key]


def test_a_run_from_before_the_switches_is_a_replicate_of_a_clean_run_of_today():
    from cramming_simple.report.load import experiment_key

    today = as_dict(PretrainConfig.from_budget("24h", "sas"))
    older = json.loads(json.dumps(today))
    for s in switches("pretrain"):
        section, key = s.key.split(".")
        del older[section][key]
    del older["arch"]["attention_dropout"]
    facts = {"block": "sas", "device": "H100", "world_size": 1, "precision": "bf16"}
    assert experiment_key(older, facts) == experiment_key(today, facts)
    published = as_dict(PretrainConfig.from_budget("24h", "sas", ["data.order=stored"]))
    assert experiment_key(published, facts) != experiment_key(today, facts)
