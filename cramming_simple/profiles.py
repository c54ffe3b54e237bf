"""The two recipes, as data: every place where the code behind the published numbers did something other than
the clean recipe, with both values (docs/recipe.md, "Two profiles").

A run's profile is read off its values, never stored as a label: `clean` when every switch of its stage has
the clean value, `published` when every one has the published value, otherwise `mixed (key=value, ...)`
naming the switches that differ from the clean recipe. A key a config does not record (a run or GLUE result
from before the switch existed) had the clean behaviour.

`budgets/24h-published.yaml`, `budgets/smoke-published.yaml` and `glue/published.yaml` set the published
values; `budgets/24h.yaml` and the `paper` protocol are the clean recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

STAGES = ("pretrain", "glue")


@dataclass(frozen=True)
class Switch:
    stage: str  # pretrain (a key of the pretraining config) | glue (a key of the GLUE protocol)
    key: str  # dotted path in that config
    clean: Any
    published: Any


SWITCHES = (
    Switch("pretrain", "data.order", "shuffle", "stored"),
    Switch("pretrain", "train.masking", "clean", "cramming"),
    Switch("pretrain", "train.ramp", "linear", "cramming"),
    Switch("pretrain", "train.decay_rule", "ndim", "names"),
    Switch("pretrain", "arch.first_layer_norm", False, True),
    Switch("pretrain", "arch.embedding_padding", "pad", "row0"),
    Switch("pretrain", "impl.precision", "auto", "fp16"),
    Switch("pretrain", "train.max_microbatches", None, 900_000),
    Switch("glue", "precision", "auto", "fp16"),
    Switch("glue", "head_width", None, 1024),
    Switch("glue", "attention_dropout", 0.0, 0.1),
    Switch("glue", "warmup_from", "each_task", "first_task"),
    Switch("glue", "single_text", "clean", "cramming"),
    Switch("glue", "drop_last", False, True),
)
# Not a switch, since the published value is unknown: GLUE's `train_order` (shuffle | stored). cramming's default
# (impl.shuffle_in_dataloader: False) is `stored`, its README passes True; both profiles keep `shuffle`.


# Keys a later version added, by stage, with the value that reproduces what ran before them (every switch at its
# clean value, and a few more): a config that records one at that value is the same experiment as an older one
# that does not record it. Reports group replicates by it (pretrain); a GLUE protocol's hash leaves them out
# (glue), so a stored result stays valid.
ADDED_LATER = {
    "pretrain": {
        **{s.key: s.clean for s in SWITCHES if s.stage == "pretrain"},
        "arch.attention_dropout": 0.0,
        "arch.pad_token_id": 0,
        "block_source": None,
        "amendments": [],
        "reference": None,  # a budget of plain hours
    },
    "glue": {**{s.key: s.clean for s in SWITCHES if s.stage == "glue"}, "train_order": "shuffle"},
}


def switches(stage: str) -> tuple[Switch, ...]:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return tuple(s for s in SWITCHES if s.stage == stage)


def lookup(values: Mapping, key: str, default: Any) -> Any:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def profile_of(stage: str, values: Mapping) -> str:
    """'clean', 'published' or 'mixed (k=v, ...)' for a config of `stage` as a nested mapping."""
    found = {s.key: (lookup(values, s.key, s.clean), s) for s in switches(stage)}
    if all(v == s.clean for v, s in found.values()):
        return "clean"
    if all(v == s.published for v, s in found.values()):
        return "published"
    return "mixed (" + ", ".join(f"{k}={v}" for k, (v, s) in found.items() if v != s.clean) + ")"
