"""A user's block file, for the bring-your-own-block tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


EXAMPLES = ROOT / "examples" / "blocks"


BLOCK_SOURCE = '''
import torch
from torch import nn
from cramming_simple.model.layers import GLU, Attention, norm


class Scaled(nn.Module):
    """Pre-LN with its branches scaled by a fixed 0.5."""

    title = "Scaled Pre-LN"
    lr = 2e-3

    def __init__(self, cfg, layer):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm(cfg), Attention(cfg), norm(cfg), GLU(cfg)

    def forward(self, x, mask):
        x = x + 0.5 * self.attn(self.norm1(x), mask)
        return x + 0.5 * self.mlp(self.norm2(x))


class NoSkip(nn.Module):
    """Plain attention and MLP without skip connections: its token representations collapse with depth."""

    def __init__(self, cfg, layer):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm(cfg), Attention(cfg), norm(cfg), GLU(cfg)

    def forward(self, x, mask):
        return self.mlp(self.norm2(self.attn(self.norm1(x), mask)))


class WrongShape(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.proj = nn.Linear(cfg.width, cfg.width // 2)

    def forward(self, x, mask):
        return self.proj(x)


class WrongSignature(nn.Module):
    def __init__(self, cfg):
        super().__init__()

    def forward(self, x, mask):
        return x
'''
