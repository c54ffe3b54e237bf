"""How a model travels: a run's `model/` written and read whole (`io`), the generated modeling file (`remote`).
Takes a built model and tokenizer from `train`/`glue`; gives Hugging Face folders to `glue`, `hub` and users.
"""

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
