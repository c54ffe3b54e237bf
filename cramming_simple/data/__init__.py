"""Pretraining data: sources, the tokenizer, packing into shards (the cache), the MLM microbatch stream.
Takes a `DataConfig` from `train`; gives shards, the tokenizer and its special ids, and microbatches to `train`.
"""

from .loader import EVAL_SEED, MicrobatchStream, MLMCollator, PackedData, Prefetcher, Split, heldout_batches, permute
from .packing import CACHE_ENV, Prepared, cache_root, data_mismatch, prepare, prepared_path
from .sources import SOURCES, DataConfig, DataError
from .tokenizer import check_tokenizer, load_tokenizer, train_wordpiece

__all__ = [
    "CACHE_ENV",
    "cache_root",
    "data_mismatch",
    "EVAL_SEED",
    "Split",
    "heldout_batches",
    "DataConfig",
    "DataError",
    "MLMCollator",
    "MicrobatchStream",
    "PackedData",
    "Prefetcher",
    "Prepared",
    "SOURCES",
    "check_tokenizer",
    "load_tokenizer",
    "permute",
    "prepare",
    "prepared_path",
    "train_wordpiece",
]
