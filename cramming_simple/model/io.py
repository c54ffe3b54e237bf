"""The `model/` folder: `model.safetensors` (encoder weights), `config.json` (arch + block), tokenizer files."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ConfigError
from .bert import MaskedLM, SequenceClassifier
from .config import ArchConfig

FORMAT = 1
WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes that compiled and DDP-wrapped models add, wherever they appear in a key."""
    cleaned = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.replace(prefix, "")
        cleaned[key] = value
    return cleaned


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DDP wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


def save_model(model: nn.Module, path: str | Path, tokenizer: Any = None) -> Path:
    """Write `path/model.safetensors` + `path/config.json` (+ the tokenizer when given)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    encoder = unwrap(model).encoder
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    config = {"format": FORMAT, "block": encoder.block, "arch": asdict(encoder.cfg)}
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def read_model_config(path: str | Path) -> tuple[ArchConfig, str]:
    path = Path(path)
    if not (path / "config.json").exists():
        raise ConfigError(f"no model at {path}: expected {path / 'config.json'} and {path / 'model.safetensors'}")
    config = json.loads((path / "config.json").read_text())
    known = {f.name for f in fields(ArchConfig)}
    arch = ArchConfig(**{k: v for k, v in config["arch"].items() if k in known})
    arch.validate()
    return arch, config["block"]


def load_model(path: str | Path, num_labels: int | None = None, **arch_overrides: Any) -> nn.Module:
    """Load a saved model: the MLM model, or (num_labels given) a SequenceClassifier with a fresh head.

    arch_overrides change execution-time values such as dropout; shapes come from the saved config.
    """
    path = Path(path)
    arch, block = read_model_config(path)
    for key, value in arch_overrides.items():
        setattr(arch, key, value)
    arch.validate()
    model = MaskedLM(arch, block) if num_labels is None else SequenceClassifier(arch, block, num_labels)
    load_encoder_state(model, load_file(str(path / "model.safetensors")))
    return model


def load_encoder_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load encoder weights (any wrapper prefixes, with or without an 'encoder.' prefix); strict on keys."""
    state = clean_state_dict(state)
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    missing, unexpected = unwrap(model).encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
