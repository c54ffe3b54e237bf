"""The model: the crammed-BERT encoder, its seven blocks and a user's own (registry), and its transformers classes.
Takes an `ArchConfig` and a block name from `train`/`glue`; gives `nn.Module`s to `train`, `glue`, `bench`, `folders`.
"""

from .bert import IGNORE, Encoder, MaskedLM, SequenceClassifier, clean_state_dict, count_params, unwrap
from .blocks import BLOCKS, BlockRecipe, BlockSpec
from .config import PRESETS, ArchConfig, arch_config
from .layers import KeyMask, set_fused
from .registry import (
    ENTRY_POINT_GROUP,
    block_spec,
    check_protocol,
    entry_point_blocks,
    load_block,
    parse_blocks,
    recorded_block,
)

__all__ = [
    "ArchConfig",
    "BLOCKS",
    "BlockRecipe",
    "BlockSpec",
    "ENTRY_POINT_GROUP",
    "KeyMask",
    "Encoder",
    "IGNORE",
    "MaskedLM",
    "PRESETS",
    "SequenceClassifier",
    "arch_config",
    "block_spec",
    "check_protocol",
    "entry_point_blocks",
    "load_block",
    "parse_blocks",
    "recorded_block",
    "clean_state_dict",
    "count_params",
    "set_fused",
    "unwrap",
]
