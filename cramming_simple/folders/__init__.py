"""Model folders: what leaves the harness. A run's `model/` is a Hugging Face folder: weights, config, tokenizer
and a self-contained `modeling_cramming_simple.py` generated from the model package (`remote`), written whole
and checked before use (`io`). `model/` holds the model itself; this package holds how it travels."""

from .io import CONFIG, WEIGHTS, check_model, load_encoder_state, load_model, read_model_config, save_model
from .remote import MODELING_FILE, RemoteCodeUnavailable, modeling_source

__all__ = [
    "CONFIG",
    "MODELING_FILE",
    "WEIGHTS",
    "RemoteCodeUnavailable",
    "check_model",
    "load_encoder_state",
    "load_model",
    "modeling_source",
    "read_model_config",
    "save_model",
]
