"""Pretraining data: sources, tokenizer, packing into shards, and the MLM microbatch stream."""

from .loader import MicrobatchStream, MLMCollator, PackedData, Prefetcher, permute
from .packing import Prepared, prepare, prepared_path
from .sources import SOURCES, DataConfig, DataError
from .tokenizer import check_tokenizer, load_tokenizer, train_wordpiece

__all__ = [
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
