"""cramming_simple/presets.py: shipped presets are found, and a local file takes precedence."""

from __future__ import annotations

from cramming_simple.presets import find_preset, list_presets, shipped
from cramming_simple.train.config import PretrainConfig


def test_shipped_presets_are_found_and_a_local_file_takes_precedence(tmp_path, monkeypatch, capsys):
    assert {"24h", "1h", "smoke"} <= set(list_presets("budgets")) and (
        shipped("reference") / "he2023_table1.csv"
    ).exists()
    monkeypatch.chdir(tmp_path)  # elsewhere: the shipped presets are still found, silently
    assert find_preset("budgets", "smoke") == shipped("budgets") / "smoke.yaml" and capsys.readouterr().err == ""
    (tmp_path / "budgets").mkdir()
    smoke = (shipped("budgets") / "smoke.yaml").read_text()
    (tmp_path / "budgets" / "smoke.yaml").write_text(smoke.replace("\nhours:", "\nhours: 0.5 #"))
    assert PretrainConfig.from_budget("smoke", "preln").hours == 0.5
    assert f"using {tmp_path / 'budgets' / 'smoke.yaml'}" in capsys.readouterr().err
    mine = tmp_path / "my-budget.yaml"
    mine.write_text(smoke.replace("\nhours:", "\nhours: 0.25 #"))
    cfg = PretrainConfig.from_budget(str(mine), "sas")
    assert cfg.hours == 0.25 and cfg.name == "sas-my-budget"
