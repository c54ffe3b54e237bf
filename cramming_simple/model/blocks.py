"""The seven blocks, exactly as docs/blocks.md, and their registry entries (a user's blocks: model.registry).

Every block maps (B, T, d) -> (B, T, d) given a KeyMask (or None: no padding). `layer` is the block's index
in the stack: the simplified blocks keep a trainable value matrix in layer 0 only.
Dropout (fine-tuning only) sits on residual branches; the shaped-attention sub-block of `sas` and the
whole `sasp` block have no skip, so dropping there would drop the signal itself: they get none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from .config import ArchConfig
from .layers import (
    GLU,
    Attention,
    KeyMask,
    ShapedAttention,
    attend,
    attention_dropout,
    eager_probs,
    glu,
    linear,
    merge_heads,
    norm,
    project,
    split_heads,
)


def add_gains(module: nn.Module, **init: float) -> None:
    """Trainable scalar gains as the module's own parameters, named as given (no weight decay: the optimiser
    groups skip every tensor with ndim < 2). Their init values stay on the module for `reset_gains`."""
    module.gain_init = init
    for name in init:
        module.register_parameter(name, nn.Parameter(torch.empty(())))
    reset_gains(module)


def reset_gains(module: nn.Module) -> None:
    with torch.no_grad():
        for name, value in module.gain_init.items():
            getattr(module, name).fill_(value)


class PreLN(nn.Module):
    """X' = X + MHA(Norm1 X);  Y = X' + MLP(Norm2 X')."""

    def __init__(self, cfg: ArchConfig, layer: int):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm(cfg), Attention(cfg), norm(cfg), GLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: KeyMask | None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class PostLN(PreLN):
    """X' = Norm1(X + MHA X);  Y = Norm2(X' + MLP X'). Same modules as Pre-LN, norms moved."""

    def forward(self, x: Tensor, mask: KeyMask | None) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x, mask)))
        return self.norm2(x + self.drop(self.mlp(x)))


class Parallel(nn.Module):
    """Y = X + MHA(Norm X) + MLP(Norm X), one shared Norm.

    The PaLM trick: one input GEMM makes Q, K, V and the MLP's hidden layer; one output GEMM on
    [attention | MLP hidden] applies W^P and the MLP's down projection together.
    """

    def __init__(self, cfg: ArchConfig, layer: int):
        super().__init__()
        d, G = cfg.width, cfg.glu_width
        self.heads, self.fused, self.probe, self.eager = cfg.heads, True, None, False
        self.attention_dropout = cfg.attention_dropout
        self.norm = norm(cfg)
        self.w_in = linear(d, 3 * d + G, cfg.init_std)  # rows: [W^Q; W^K; W^V; W_up]
        self.w_out = linear(d + G // 2, d, cfg.init_std)  # columns: [W^P | W_down]
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: KeyMask | None) -> Tensor:
        d, normed = x.shape[-1], self.norm(x)
        q, k, v, h = project(normed, self.w_in, [d, d, d, self.w_in.out_features - 3 * d], self.fused)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        probs = eager_probs(self, q, k, mask)
        a = merge_heads(attend(q, k, v, mask, self.fused, attention_dropout(self), probs))  # (B, T, d)
        if self.probe is not None:  # the attention sub-block's output here is A V, before the shared output GEMM
            self.probe(q, k, mask, normed, a, probs)
        if self.fused:
            out = self.w_out(torch.cat([a, glu(h, self.fused)], dim=-1))
        else:
            w_proj, w_down = self.w_out.weight.split([d, self.w_out.in_features - d], dim=1)
            out = a @ w_proj.T + glu(h, fused=False) @ w_down.T
        return x + self.drop(out)


class SAS(nn.Module):
    """X' = beta_SA * SMHA(Norm1 X);  Y = alpha_FF * X' + beta_FF * MLP(Norm2 X').

    values='full' gives `vskipinit`: trainable, orthogonally initialised W^V and W^P in every layer.
    """

    def __init__(self, cfg: ArchConfig, layer: int, values: str | None = None):
        super().__init__()
        values = values or ("reparam" if layer == 0 else "identity")
        self.norm1, self.attn = norm(cfg), ShapedAttention(cfg, values)
        self.norm2, self.mlp = norm(cfg), GLU(cfg)
        add_gains(self, beta_sa=1.0, alpha_ff=1.0, beta_ff=cfg.beta_ff_init)
        self.drop = nn.Dropout(cfg.dropout)

    def harness_init(self) -> None:
        reset_gains(self)

    def forward(self, x: Tensor, mask: KeyMask | None) -> Tensor:
        x = self.attn(self.norm1(x), mask, gain=self.beta_sa)
        return torch.addcmul(self.alpha_ff * x, self.beta_ff, self.drop(self.mlp(self.norm2(x))))  # a + b * c, one pass


class SASP(nn.Module):
    """Y = beta_SA * SMHA(Norm X) + beta_FF * MLP(Norm X): one shared Norm, no skip at all.

    with_norm=False gives `sasp-nonorm` (layer 0 keeps its norm when arch.first_layer_norm is set). One input
    GEMM makes Q, K and the MLP's hidden layer.
    """

    def __init__(self, cfg: ArchConfig, layer: int, with_norm: bool = True):
        super().__init__()
        d, G = cfg.width, cfg.glu_width
        self.fused = True
        self.norm = norm(cfg) if with_norm or (layer == 0 and cfg.first_layer_norm) else nn.Identity()
        self.w_in = linear(d, 2 * d + G, cfg.init_std, zero_rows=d)  # rows: [W^Q; W^K; W_up], W^Q = 0
        self.attn = ShapedAttention(cfg, "reparam" if layer == 0 else "identity", with_qk=False)
        self.down = linear(G // 2, d, cfg.init_std)
        add_gains(self, beta_sa=1.0, beta_ff=cfg.beta_ff_init)
        self.drop = nn.Dropout(cfg.dropout)

    def harness_init(self) -> None:
        reset_gains(self)

    def forward(self, x: Tensor, mask: KeyMask | None) -> Tensor:
        x = self.norm(x)
        d = x.shape[-1]
        q, k, h = project(x, self.w_in, [d, d, self.w_in.out_features - 2 * d], self.fused)
        return torch.addcmul(
            self.attn(x, mask, gain=self.beta_sa, qk=(q, k)), self.beta_ff, self.drop(self.down(glu(h, self.fused)))
        )


@dataclass(frozen=True)
class BlockSpec:
    """A registry entry: how to build the block, its name in tables, and where it came from.

    `lr` / `weight_decay`: the block's training recipe (docs/recipe.md), the one home of it. Built-in blocks set
    both here; a user's block (model.registry) may carry them as class attributes (None: Pre-LN's).
    """

    build: Callable[[ArchConfig, int], nn.Module]
    title: str
    ref: str = ""  # what configs record: the built-in name, `/abs/file.py:Class`, `module:Class` or an entry point
    name: str = ""  # short, path-free: run folder names (<name>-<budget>)
    lr: float | None = None
    weight_decay: float | None = None
    source: dict = field(default_factory=dict)  # provenance record (model.registry): kind, path or module, sha256
    source_text: str | None = None  # a user block's source as imported: saved models embed it

    @property
    def builtin(self) -> bool:
        return self.source.get("kind", "builtin") == "builtin"

    @property
    def recipe(self) -> BlockRecipe:
        """The peak learning rate and weight decay a budget uses unless it (or an override) sets its own."""
        base = BLOCKS["preln"]
        return BlockRecipe(
            base.lr if self.lr is None else self.lr,
            base.weight_decay if self.weight_decay is None else self.weight_decay,
        )


@dataclass(frozen=True)
class BlockRecipe:
    """A block's peak learning rate of the budget triangle and its weight decay (docs/recipe.md)."""

    lr: float
    weight_decay: float


def _builtin(
    name: str, build: Callable[[ArchConfig, int], nn.Module], title: str, lr: float, weight_decay: float
) -> BlockSpec:
    source = {"kind": "builtin", "name": name, "title": title}
    return BlockSpec(build, title, ref=name, name=name, lr=lr, weight_decay=weight_decay, source=source)


BLOCKS: dict[str, BlockSpec] = {
    # name: how to build it, its title in tables, its peak LR and weight decay (docs/recipe.md)
    "preln": _builtin("preln", PreLN, "Pre-LN", 1e-3, 0.01),
    "postln": _builtin("postln", PostLN, "Post-LN", 1e-3, 0.01),
    "parallel": _builtin("parallel", Parallel, "Parallel", 1e-3, 0.01),
    "sas": _builtin("sas", SAS, "SAS", 3e-3, 0.1),
    "sasp": _builtin("sasp", SASP, "SAS-P", 3e-3, 0.1),
    "sasp-nonorm": _builtin(
        "sasp-nonorm", lambda cfg, layer: SASP(cfg, layer, with_norm=False), "SAS-P, no norm", 2e-3, 0.1
    ),
    "vskipinit": _builtin("vskipinit", lambda cfg, layer: SAS(cfg, layer, values="full"), "V-SkipInit", 1e-3, 0.01),
}
