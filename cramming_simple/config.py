"""Typed configs: dataclasses as the schema, OmegaConf for YAML and `key=value` overrides.

Every config the harness reads (budgets, GLUE protocols, the task table) goes through `load_typed`, so a
typo fails at load with the list of valid keys instead of at hour three. Dataclasses may define
`validate()`; it runs on every nested dataclass after the merge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .errors import ConfigError as ConfigError  # re-exported: configs are where most user errors come from

T = TypeVar("T")


def valid_keys(schema: type, dotted: str) -> list[str]:
    """The field names of the dataclass that `dotted` (e.g. 'train.lr') would live in."""
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        node = typing.get_type_hints(node).get(part) if dataclasses.is_dataclass(node) else None
    return sorted(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else []


def _explain(schema: type, err: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and key:
        keys = valid_keys(schema, key)
        where = key.rsplit(".", 1)[0] if "." in key else "the top level"
        return ConfigError(f"{origin}: unknown key '{key}'. Valid keys under {where}: {', '.join(keys)}")
    msg = str(err).splitlines()[0]
    return ConfigError(f"{origin}: {msg}" + (f" (key '{key}')" if key else ""))


def dotlist(items: Iterable[str], origin: str = "command line") -> DictConfig:
    """`key=value` overrides as a config; one that YAML cannot read (an unclosed list, `train.betas=[0.9`) is a
    ConfigError naming it, not a parser traceback."""
    items = list(items)
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{origin}: {item!r} is not key=value")
        try:
            OmegaConf.from_dotlist([item])
        except Exception as err:  # noqa: BLE001 - yaml's and OmegaConf's errors alike: the value cannot be read
            said = getattr(err, "problem", None) or str(err).splitlines()[0]  # yaml's: "did not find expected ..."
            raise ConfigError(f"{origin}: cannot read {item!r} ({said})") from None
    return OmegaConf.from_dotlist(items)


def merge_typed(schema: type[T], base: T | None, layers: Iterable[tuple[str, Any]]) -> T:
    """Merge (origin, mapping-or-dotlist) layers onto `base` (or the schema defaults) and validate.

    `origin` names the layer in error messages (a file path, 'command line').
    """
    cfg: DictConfig = OmegaConf.structured(base if base is not None else schema)
    for origin, layer in layers:
        try:
            if isinstance(layer, (list, tuple)):
                layer = dotlist(layer, origin)
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            raise _explain(schema, err, origin) from None
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _explain(schema, err, "config") from None
    run_validators(obj)
    return obj  # type: ignore[return-value]


def run_validators(obj: Any) -> None:
    """Call `validate()` on `obj` and every nested dataclass, innermost first."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        run_validators(getattr(obj, f.name))
    if hasattr(obj, "validate"):
        obj.validate()


def load_yaml(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        return OmegaConf.load(path)  # type: ignore[return-value]
    except Exception as err:  # yaml syntax errors come in many types
        raise ConfigError(f"{path}: cannot parse YAML: {err}") from None


def to_dict(obj: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)  # type: ignore[return-value]


def to_yaml(obj: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(obj))


def config_hash(obj: Any, length: int = 12) -> str:
    """A stable short hash of a config (dataclass or plain data), for cache keys and provenance."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:length]


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
