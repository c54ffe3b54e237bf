"""Tiny models and inputs for the model tests: the tiny arch, weights moved off their init, padded batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cramming_simple.model import (
    arch_config,
)
from cramming_simple.model.hf import (
    CrammingSimpleConfig,
    CrammingSimpleForMaskedLM,
    CrammingSimpleForSequenceClassification,
    CrammingSimpleModel,
)

TINY = arch_config("tiny", vocab_size=512)


def batch(B=3, T=16, vocab=512, pad_from=(16, 11, 5), seed=0):
    """Random ids (no pad ids at real positions) and an attention mask padding each row from pad_from[b]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, start in enumerate(pad_from):
        mask[b, start:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def mlm_batch(B=3, T=16, M=4, seed=0):
    """Ids, a padding mask (rows end at 16, 11, 7), M masked positions per row inside the real tokens, labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, end in enumerate((16, 11, 7)[:B]):
        mask[b, end:] = 0
    positions = torch.stack([torch.randperm(7, generator=g)[:M] for _ in range(B)])
    return ids.masked_fill(mask == 0, 0), mask, positions, ids.gather(1, positions)


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 1) -> None:
    """Move every parameter away from its init so that equation tests see general weights (W^Q != 0...)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 and p.std() > 0 else 1.0))


SHAPED = ["sas", "sasp", "sasp-nonorm", "vskipinit"]


def ln(x, m):
    return F.layer_norm(x, (x.shape[-1],), m.weight, m.bias, m.eps)


ARCH = {"preset": "tiny", "vocab_size": 128, "depth": 2, "width": 32, "heads": 2, "glu_width": 64, "dropout": 0.0}


CLASSES = (CrammingSimpleModel, CrammingSimpleForMaskedLM, CrammingSimpleForSequenceClassification)


def tiny(cls=CrammingSimpleForSequenceClassification, block="sas", seed=0, **config):
    torch.manual_seed(seed)
    return cls(CrammingSimpleConfig(block=block, arch=dict(ARCH), **config)).eval()


def ids(batch=3, length=10, seed=1) -> torch.Tensor:
    return torch.randint(5, ARCH["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))
