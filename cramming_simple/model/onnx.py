"""ONNX export of the Hugging Face classes (model.hf): torch's exporter (torch.export based, `dynamo=True`) with a
dynamic batch and sequence length, inputs `input_ids` and `attention_mask` (int64, (B, T)) and one output named as
the class names it (`last_hidden_state` or `logits`). Needs the `onnx` extra (onnx, onnxscript; onnxruntime runs
the file). docs/huggingface.md shows it run under onnxruntime."""

from __future__ import annotations

from pathlib import Path

import torch


def export_onnx(model, path: str | Path, example_length: int = 16) -> Path:
    """Write `model` (CrammingSimpleModel / ForMaskedLM / ForSequenceClassification) to `path` as ONNX, in eval
    mode, for any batch size and any length up to the model's seq_len."""
    model = model.eval()
    length = min(example_length, model.config.max_position_embeddings)
    input_ids = torch.full((2, length), 5, dtype=torch.long)  # (B, T); the values do not shape the graph
    attention_mask = torch.ones_like(input_ids)
    batch = torch.export.Dim("batch")
    tokens = torch.export.Dim("length", max=model.config.max_position_embeddings)
    output = "last_hidden_state" if type(model).__name__ == "CrammingSimpleModel" else "logits"
    program = torch.onnx.export(
        model,
        (input_ids, attention_mask),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=[output],
        dynamic_shapes={"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens}},
        verbose=False,
    )
    path = Path(path)
    program.save(str(path))
    return path
