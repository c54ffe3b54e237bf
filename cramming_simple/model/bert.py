"""The crammed-BERT encoder with its two heads: sparse-prediction MLM and GLUE sequence prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ArchConfig
from .layers import Embedding, KeyMask, Linear, norm
from .registry import block_spec

IGNORE = -100  # label of positions that carry no loss


class Encoder(nn.Module):
    """Embedding -> `depth` blocks -> final LayerNorm. (B, T) token ids -> (B, T, d)."""

    def __init__(self, cfg: ArchConfig, block: str):
        super().__init__()
        spec = block_spec(block)
        cfg.validate()
        self.cfg, self.block, self.spec = cfg, spec.ref, spec  # spec: title and provenance, for saving
        self.embedding = Embedding(cfg)
        self.layers = nn.ModuleList(spec.build(cfg, i) for i in range(cfg.depth))
        self.final_norm = norm(cfg)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        x = self.embedding(input_ids)
        mask = KeyMask.from_attention_mask(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)


class MaskedLM(nn.Module):
    """MLM with sparse prediction: only the masked positions reach the decoder (tied, no bias)."""

    def __init__(self, cfg: ArchConfig, block: str):
        super().__init__()
        self.encoder = Encoder(cfg, block)

    def forward(
        self, input_ids: Tensor, positions: Tensor, labels: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Mean cross-entropy over the masked positions.

        positions: (B, M) indices of the masked tokens, M fixed per batch (static shapes for compile);
        labels: (B, M) their original ids, IGNORE where a row had fewer than M maskable tokens.
        """
        h = self.encoder(input_ids, attention_mask)  # (B, T, d)
        h = h.gather(1, positions.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, M, d)
        logits = self.encoder.embedding.tokens(h, decode=True)  # (B, M, V), the tied decoder
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)

    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Full-vocabulary logits at every position, (B, T, V): for evaluation, not training."""
        return MaskedLM.decode(self, self.encoder(input_ids, attention_mask))

    def decode(self, hidden: Tensor) -> Tensor:
        """(B, T, d) encoder output -> (B, T, V) logits through the tied embedding."""
        return self.encoder.embedding.tokens(hidden, decode=True)


class ClassificationHead(nn.Module):
    """(B, T, d) encoder output -> (B, num_labels): the first token through dense, tanh, dropout, out.

    head_width: the dense layer's output width (None: the encoder's width; cramming's head: 1024).
    The head's two Linears keep their biases (zero at init), as in cramming's pooler and classifier; the no-bias
    rule is the encoder's. Named `classifier` in its models, the name peft's SEQ_CLS trains (weights
    `classifier.dense.*`, `classifier.out.*`; folders from before it have `dense.*`, `out.*`: LEGACY_HEAD).
    """

    def __init__(self, cfg: ArchConfig, num_labels: int, head_width: int | None = None):
        super().__init__()
        head_width = head_width or cfg.width
        self.dense = Linear(cfg.width, head_width, cfg.init_std, bias=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = Linear(head_width, num_labels, cfg.init_std, bias=True)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out(self.dropout(torch.tanh(self.dense(hidden[:, 0]))))


LEGACY_HEAD = {"dense.": "classifier.dense.", "out.": "classifier.out."}  # weight-name prefixes, old -> new


def current_key(key: str) -> str:
    """A weight name of a folder saved before the head was `classifier`, in today's name (others unchanged)."""
    for old, new in LEGACY_HEAD.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


class SequenceClassifier(nn.Module):
    """GLUE model: the encoder and a ClassificationHead. num_labels=1 is regression (MSE)."""

    def __init__(self, cfg: ArchConfig, block: str, num_labels: int, head_width: int | None = None):
        super().__init__()
        self.num_labels = num_labels
        self.encoder = Encoder(cfg, block)
        self.classifier = ClassificationHead(cfg, num_labels, head_width)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        logits = SequenceClassifier.head(self, self.encoder(input_ids, attention_mask))
        return logits, SequenceClassifier.loss(self, logits, labels)

    def head(self, hidden: Tensor) -> Tensor:
        """(B, T, d) encoder output -> (B, num_labels)."""
        return self.classifier(hidden)

    def loss(self, logits: Tensor, labels: Tensor | None) -> Tensor | None:
        if labels is None:
            return None
        if self.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)


def count_params(model: nn.Module) -> dict[str, int]:
    """Total trainable parameters and those outside the embedding (tokens, position scale, embedding norm)."""
    encoder = model.encoder if hasattr(model, "encoder") else model
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for p in encoder.embedding.parameters())
    return {"params": total, "non_embedding": total - embedding}


# ----------------------------------------------------------------------------------------------- wrappers

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes that compiled and DDP-wrapped models add, wherever they appear in a key."""
    return {unwrapped_key(k): v for k, v in state.items()}


def unwrapped_key(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DDP wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner
