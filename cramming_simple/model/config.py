"""Architecture config: the crammed-BERT encoder (docs/blocks.md) and a tiny CPU-sized twin."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..config import ConfigError, require

MODEL_TYPE = "cramming-simple-bert"  # a saved folder's `model_type` for Hugging Face transformers (model.hf)


SPECIAL_ROLES = ("pad", "cls", "sep", "mask", "unk")
EMBEDDING_PADDINGS = ("pad", "row0")  # arch.embedding_padding  # the special tokens the harness uses, by their role


def special_ids(tokenizer: Any) -> dict[str, int | None]:
    """{"pad_token_id": ..., "cls_token_id": ..., ...}: the ids a tokenizer gives its special tokens, in any order
    (cramming's tokenizers number them in Python's set order, so pad need not be 0). Recorded with every model."""
    return {f"{role}_token_id": getattr(tokenizer, f"{role}_token_id", None) for role in SPECIAL_ROLES}


@dataclass
class ArchConfig:
    preset: str = "crammed-bert"  # provenance: which preset the other values started from
    vocab_size: int = 32768
    seq_len: int = 128  # positions of the sinusoid table
    width: int = 768
    depth: int = 16
    heads: int = 12
    glu_width: int = 3072  # output width of the FFN's first Linear; split into value and gate halves
    norm_eps: float = 1e-12
    init_std: float = 0.02
    beta_ff_init: float = 0.05  # shaped-attention blocks: MLP branch gain at init (0.1 in the GPT runs)
    dropout: float = 0.0  # pretraining runs without dropout; GLUE fine-tuning sets 0.1
    attention_dropout: float = 0.0  # on the attention probabilities, in training mode only (GLUE's attention_dropout)
    # The official simplified-blocks code's "always use LN in first layer": a block without norms (sasp-nonorm)
    # keeps a LayerNorm on layer 0's input. Off by default: the embedding's LayerNorm already normalises it.
    first_layer_norm: bool = False
    # The tokenizer's pad id: the embedding's padding index (its row starts at zero and gets no gradient). A
    # tokenizer made as cramming's upload was (special tokens in set order) need not pad with 0; pretraining sets
    # it from the tokenizer. Folders saved before it existed padded with 0.
    pad_token_id: int = 0
    # Which embedding row is the padding row (zero at init, no gradient from the lookup): `pad`, the tokenizer's pad
    # id; or `row0`, row 0 whatever the pad id is, as cramming's code did (its arch configs fix padding_idx 0 while
    # its upload's tokenizer pads with another id): a switch of the published profile (docs/recipe.md).
    embedding_padding: str = "pad"

    @property
    def padding_index(self) -> int:
        """The embedding's padding index: the pad id, or 0 under `embedding_padding: row0`."""
        return 0 if self.embedding_padding == "row0" else self.pad_token_id

    def validate(self) -> None:
        for name in ("vocab_size", "seq_len", "width", "depth", "heads", "glu_width"):
            require(getattr(self, name) > 0, f"arch.{name} must be positive, got {getattr(self, name)}")
        require(self.width % self.heads == 0, f"arch.heads ({self.heads}) must divide arch.width ({self.width})")
        require(self.glu_width % 2 == 0, f"arch.glu_width must be even (value and gate halves), got {self.glu_width}")
        require(self.norm_eps > 0 and self.init_std > 0, "arch.norm_eps and arch.init_std must be positive")
        require(
            0 <= self.pad_token_id < self.vocab_size,
            f"arch.pad_token_id must be a token id below arch.vocab_size ({self.vocab_size}), got {self.pad_token_id}",
        )
        require(
            self.embedding_padding in EMBEDDING_PADDINGS,
            f"arch.embedding_padding must be one of {', '.join(EMBEDDING_PADDINGS)}, got '{self.embedding_padding}'",
        )
        for name in ("dropout", "attention_dropout"):
            require(0.0 <= getattr(self, name) < 1.0, f"arch.{name} must be in [0, 1), got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ArchConfig:
        """An arch as a config.json or summary.json saved it: its preset with the saved values (`arch_config`, the
        one constructor), validated; an unknown key fails, naming the valid ones."""
        values = dict(values)
        return arch_config(values.pop("preset", "crammed-bert"), **values)


PRESETS: dict[str, ArchConfig] = {
    "crammed-bert": ArchConfig(),
    # Same code path, CPU-sized: smoke runs and tests.
    "tiny": ArchConfig(preset="tiny", vocab_size=8192, depth=2, width=128, heads=2, glu_width=512),
}


def arch_config(preset: str = "crammed-bert", **overrides: Any) -> ArchConfig:
    """A preset with overrides, validated. Unknown presets or keys fail with the valid choices."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown arch preset '{preset}'. Valid presets: {', '.join(PRESETS)}")
    names = {f.name for f in fields(ArchConfig)} - {"preset"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown arch key(s) {unknown}. Valid keys: {', '.join(sorted(names))}")
    cfg = replace(PRESETS[preset], **overrides)
    cfg.validate()
    return cfg
