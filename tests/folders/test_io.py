"""cramming_simple/folders/io.py: model folders saved and loaded, old and compiled state dicts, checks of a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.models import TINY, batch, perturb
from helpers.tokenizers import upload_model
from safetensors.torch import save_file

from cramming_simple.data import load_tokenizer
from cramming_simple.folders import load_model, save_model
from cramming_simple.model import (
    MaskedLM,
    SequenceClassifier,
    arch_config,
)


def test_a_classifier_saved_by_the_harness_round_trips():
    model = SequenceClassifier(arch_config("tiny", vocab_size=512), "sas", num_labels=3, head_width=96).eval()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, Path(tmp) / "m", extra={"task": "mnli"})
        from cramming_simple.folders import check_model

        check_model(Path(tmp) / "m")
        loaded = load_model(Path(tmp) / "m").eval()
    ids = torch.tensor([[2, 40, 41, 3]])
    assert loaded.classifier.dense.out_features == 96 and torch.equal(loaded(ids)[0], model(ids)[0])


def test_first_layer_norm_survives_save_and_load(tmp_path):
    from dataclasses import replace

    model = MaskedLM(replace(arch_config("tiny"), first_layer_norm=True), "sasp-nonorm")
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.encoder.cfg.first_layer_norm and isinstance(loaded.encoder.layers[0].norm, torch.nn.LayerNorm)


@pytest.mark.parametrize("block", ["preln", "sasp", "vskipinit"])
def test_save_load_roundtrip(tmp_path, block):
    torch.manual_seed(0)
    model = MaskedLM(TINY, block).eval()
    perturb(model)
    ids, mask = batch()
    save_model(model, tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").exists() and (tmp_path / "model" / "config.json").exists()
    loaded = load_model(tmp_path / "model").eval()
    with torch.no_grad():
        assert torch.equal(model.logits(ids, mask), loaded.logits(ids, mask))
    clf = load_model(tmp_path / "model", num_labels=2, dropout=0.1)
    assert isinstance(clf, SequenceClassifier) and clf.encoder.cfg.dropout == 0.1
    assert torch.equal(clf.encoder.embedding.tokens.weight, model.encoder.embedding.tokens.weight)


def test_compiled_state_dict_with_orig_mod_prefix_loads(tmp_path):
    torch.manual_seed(0)
    model = MaskedLM(TINY, "sas").eval()
    perturb(model)
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    fresh = MaskedLM(TINY, "sas").eval()
    from cramming_simple.folders.io import load_encoder_state

    load_encoder_state(fresh, state)
    ids, _ = batch(pad_from=(16, 16, 16))
    with torch.no_grad():
        assert torch.equal(model.logits(ids), fresh.logits(ids))
    # and through the safetensors file, as a compiled model's weights would be written by other tools

    save_model(model, tmp_path / "m")
    save_file(
        {f"_orig_mod.{k}": v.contiguous() for k, v in model.encoder.state_dict().items()},
        str(tmp_path / "m" / "model.safetensors"),
    )
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m").logits(ids), model.logits(ids))


def test_check_model_refuses_a_config_whose_pad_is_not_the_embeddings(upload, tmp_path):
    from cramming_simple.errors import CorruptFileError
    from cramming_simple.folders import check_model

    model = upload_model(upload, tmp_path) / "model"
    assert check_model(model)[0].pad_token_id == load_tokenizer(upload / "tokenizer").pad_token_id
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "pad_token_id": 0}))
    with pytest.raises(CorruptFileError, match="padding index"):
        check_model(model)
