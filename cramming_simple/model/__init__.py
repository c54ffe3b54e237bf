"""The model zoo: the crammed-BERT encoder with seven interchangeable blocks (docs/blocks.md)."""

from .bert import IGNORE, Encoder, MaskedLM, SequenceClassifier, count_params
from .blocks import BLOCKS, BlockSpec, block_spec
from .config import PRESETS, ArchConfig, arch_config
from .io import check_model, clean_state_dict, load_model, read_model_config, save_model, unwrap
from .layers import set_fused

__all__ = [
    "ArchConfig",
    "BLOCKS",
    "BlockSpec",
    "Encoder",
    "IGNORE",
    "MaskedLM",
    "PRESETS",
    "SequenceClassifier",
    "arch_config",
    "block_spec",
    "check_model",
    "clean_state_dict",
    "count_params",
    "load_model",
    "read_model_config",
    "save_model",
    "set_fused",
    "unwrap",
]
