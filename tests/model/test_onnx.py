"""cramming_simple/model/onnx.py: ONNX exports of the three heads under onnxruntime."""

from __future__ import annotations

import pytest
import torch
from helpers.models import CLASSES, ids, tiny

from cramming_simple.model.hf import (
    CrammingSimpleModel,
)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_onnx_exports_of_the_three_heads_give_the_models_outputs_under_onnxruntime(cls, tmp_path):
    """Exported at one shape, run at other batch sizes and lengths with padding: within 1e-4 of the model."""
    import onnxruntime

    from cramming_simple.model.onnx import export_onnx

    model = tiny(cls, "sasp", num_labels=3)
    session = onnxruntime.InferenceSession(str(export_onnx(model, tmp_path / "model.onnx")))
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state" if cls is CrammingSimpleModel else "logits"]
    for batch, length in ((1, 5), (4, 23)):
        x, mask = ids(batch, length), torch.ones(batch, length, dtype=torch.long)
        mask[0, length - 2 :] = 0
        with torch.no_grad():
            expected = model(input_ids=x, attention_mask=mask)[0].numpy()
        (got,) = session.run(None, {"input_ids": x.numpy(), "attention_mask": mask.numpy()})
        assert got.shape == expected.shape and abs(got - expected).max() < 1e-4
