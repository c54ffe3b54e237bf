"""Pieces shared by the blocks: projections, the GLU MLP, attention cores, masks, embeddings.

Every module with a fast path has a `fused` attribute (True by default). `set_fused(model, False)` switches
the whole model to the plain reference path (one GEMM per weight, explicit T x T attention matrices), which
tests compare against the fast path.

Every module that computes attention has a `probe` attribute (None by default): `model.diagnostics` sets it
to a function called with (q, k, mask, x, out, probs) - queries and keys split into heads (B, H, T, dk), the
sub-block's input (B, T, d), its output (B, T, d), and the attention probabilities (B, H, T, T) it used where
it built them (None on the SDPA path) - to measure attention without changing the forward. Its `eager`
attribute (False by default) makes it build those probabilities as an explicit matrix and use them (model.hf:
`attn_implementation="eager"`, `output_attentions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ArchConfig


class Linear(nn.Linear):
    """The harness's Linear: normal(0, std) init, no bias unless asked (none anywhere in the encoder:
    docs/blocks.md; the GLUE head's two keep a zero bias). `zero_rows`: that many leading output rows start at
    zero (W^Q = 0 of the shaped blocks, the first chunk of a fused projection). `orthogonal`: an orthogonal
    init instead (V-SkipInit's W^V and W^P).

    Every module with parameters of its own has a `harness_init()` that sets them as the constructor does:
    a Hugging Face load calls it for what a folder lacks (model.hf), so missing weights get the harness's init.
    """

    def __init__(
        self, fan_in: int, fan_out: int, std: float, bias: bool = False, zero_rows: int = 0, orthogonal: bool = False
    ):
        super().__init__(fan_in, fan_out, bias=bias)
        self.std, self.zero_rows, self.orthogonal = std, zero_rows, orthogonal
        self.harness_init()

    def harness_init(self) -> None:
        if self.orthogonal:
            orthogonal_init(self.weight)
        else:
            nn.init.normal_(self.weight, std=self.std)
        with torch.no_grad():
            self.weight[: self.zero_rows].zero_()
        if self.bias is not None:
            nn.init.zeros_(self.bias)


def linear(fan_in: int, fan_out: int, std: float, zero_rows: int = 0) -> Linear:
    """A bias-free Linear with normal(0, std) init, its first `zero_rows` rows zero."""
    return Linear(fan_in, fan_out, std, zero_rows=zero_rows)


def norm(cfg: ArchConfig) -> nn.LayerNorm:
    return nn.LayerNorm(cfg.width, eps=cfg.norm_eps)  # weight 1, bias 0 by default


def project(x: Tensor, layer: nn.Linear, sizes: list[int], fused: bool) -> list[Tensor]:
    """layer(x), split into chunks of `sizes` along the last dim.

    fused: one call of the module, one GEMM for all chunks (QKV, or attention + MLP inputs of the parallel
    blocks). Called as a module, so what wraps or hooks it (LoRA adapters, accelerate's offloading) sees the use.
    reference: one GEMM per chunk, on slices of the module's weight (the plain path that tests compare against).
    """
    if fused:
        return list(layer(x).split(sizes, dim=-1))
    return [F.linear(x, w) for w in layer.weight.split(sizes, dim=0)]


def glu(h: Tensor, fused: bool) -> Tensor:
    """(..., 2f) -> (..., f): first half times GELU of the second half.

    fused: the same maths with a backward that writes both halves of dL/dh into one buffer, where autograd
    would make two and concatenate them (one pass over (..., 2f) less: GLU forward + backward 20-40 % faster
    in a CPU micro-benchmark at crammed-bert size).
    Eager only: torch.compile cannot trace writes into strided views (a graph break), and fuses the plain
    ops by itself.
    """
    if fused and not torch.compiler.is_compiling():
        return GatedGELU.apply(h)
    value, gate = h.chunk(2, dim=-1)
    return value * F.gelu(gate)


class GatedGELU(torch.autograd.Function):
    """glu's fast path: (..., 2f) -> (..., f), its gradient written into one (..., 2f) buffer."""

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        value, gate = h.chunk(2, dim=-1)
        act = F.gelu(gate)
        ctx.save_for_backward(h, act)  # what autograd would keep too: value (a view of h) and gelu(gate)
        return value * act

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        h, act = ctx.saved_tensors
        value, gate = h.chunk(2, dim=-1)
        grad_h = torch.empty_like(h)
        grad_value, grad_gate = grad_h.chunk(2, dim=-1)  # views: the ops below write straight into grad_h
        torch.mul(grad, act, out=grad_value)
        torch.ops.aten.gelu_backward.grad_input(grad * value, gate, grad_input=grad_gate)
        return grad_h


class GLU(nn.Module):
    """MLP(X) = Linear(glu_width/2 -> d)(x * gelu(g)), with (x, g) = Linear(d -> glu_width)(X)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.fused = True
        self.up = linear(cfg.width, cfg.glu_width, cfg.init_std)
        self.down = linear(cfg.glu_width // 2, cfg.width, cfg.init_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(glu(self.up(x), self.fused))


# ----------------------------------------------------------------------------------------------- masks


@dataclass
class KeyMask:
    """A key-padding mask in the forms attention needs. `None` instead of a KeyMask means no padding."""

    allow: Tensor  # (B, 1, 1, T) bool: True where the key is a real token
    valid: Tensor  # (B, 1, T, 1) float 1/0: the same, for masked means over keys in (B, H, T, dk) layout
    count: Tensor  # (B, 1, 1, 1) float: number of real tokens

    @classmethod
    def from_attention_mask(cls, attention_mask: Tensor | None, dtype: torch.dtype) -> KeyMask | None:
        if attention_mask is None:
            return None
        keep = attention_mask.bool()  # (B, T)
        valid = keep[:, None, :, None].to(dtype)
        return cls(allow=keep[:, None, None, :], valid=valid, count=valid.sum(dim=2, keepdim=True))


# ----------------------------------------------------------------------------------------------- attention


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, d) -> (B, H, T, d/H), a view."""
    B, T, _ = x.shape
    return x.view(B, T, heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, dk) -> (B, T, H * dk)."""
    B, H, T, dk = x.shape
    return x.transpose(1, 2).reshape(B, T, H * dk)


def attention_matrix(q: Tensor, k: Tensor, mask: KeyMask | None) -> Tensor:
    """A = softmax(Q K^T / sqrt(dk) + M) as an explicit (B, H, T, T) tensor, the softmax in at least fp32
    (CPU autocast would run it in bf16), returned in q's dtype."""
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask.allow, float("-inf"))
    return logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(q.dtype)


def uniform_matrix(v: Tensor, mask: KeyMask | None) -> Tensor:
    """Reference path: C, the attention that all-zero logits give: uniform over the allowed keys."""
    T = v.shape[-2]
    if mask is None:
        return v.new_full((1, 1, T, T), 1.0 / T)
    return (mask.valid / mask.count).transpose(-2, -1).expand(-1, -1, T, -1)  # (B, 1, T, T)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: KeyMask | None,
    fused: bool,
    dropout: float = 0.0,
    probs: Tensor | None = None,
) -> Tensor:
    """A_h V_h for every head, with dropout on the attention probabilities A_h (pass 0 outside training).
    q, k, v: (B, H, T, dk) -> (B, H, T, dk). probs: A_h (B, H, T, T), already built by the caller (eager).

    fused: SDPA, except on a CPU in bf16 / fp16, where two batched matmuls around an fp32 softmax are faster:
    measured on a 2-core AVX-512 BF16 CPU (forward + backward, 12 heads of 64), 4 ms against SDPA's 20 ms at
    batch 8 x 128 tokens, 17 ms against 31 ms at 2 x 512 (docs/speed.md). In fp32 the two are even there.
    """
    if probs is not None:
        return F.dropout(probs, dropout) @ v
    if fused and not (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if mask is None else mask.allow, dropout_p=dropout
        )
    return F.dropout(attention_matrix(q, k, mask), dropout) @ v


def key_mean(v: Tensor, mask: KeyMask | None) -> Tensor:
    """C V_h: the mean of the values over the allowed keys, (B, H, T, dk) -> (B, H, 1, dk)."""
    if mask is None:
        return v.mean(dim=2, keepdim=True)
    return (v * mask.valid).sum(dim=2, keepdim=True) / mask.count


def shaped_attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    gamma: Tensor,
    mask: KeyMask | None,
    fused: bool,
    dropout: float = 0.0,
    probs: Tensor | None = None,
) -> Tensor:
    """(alpha_h I + beta_h A_h - gamma_h C) V_h for every head. q, k, v: (B, H, T, dk); gains: (H,); probs: A_h
    (B, H, T, T) where the caller built it (eager).
    dropout acts on the attention probabilities A_h only: the identity and centring terms are not attention.

    fused: A_h V_h through fused SDPA plus two cheap terms (alpha_h V_h, gamma_h * mean of V_h), combined
    in two passes over (B, H, T, dk) (addcmul: a + b * c); no T x T matrix is built.
    reference: the shaped matrix itself, then one matmul.
    """
    alpha, beta, gamma = (g.view(1, -1, 1, 1) for g in (alpha, beta, gamma))  # (1, H, 1, 1)
    if fused:
        centred = torch.addcmul(-gamma * key_mean(v, mask), alpha, v)  # alpha_h V_h - gamma_h C V_h
        return torch.addcmul(centred, beta, attend(q, k, v, mask, fused=True, dropout=dropout, probs=probs))
    T = v.shape[-2]
    eye = torch.eye(T, dtype=v.dtype, device=v.device)
    probs = attention_matrix(q, k, mask) if probs is None else probs
    shaped = alpha * eye + beta * F.dropout(probs, dropout) - gamma * uniform_matrix(v, mask)
    return shaped @ v


def eager_probs(module: nn.Module, q: Tensor, k: Tensor, mask: KeyMask | None) -> Tensor | None:
    """The attention probabilities (B, H, T, T) as an explicit matrix where the module runs eager, else None."""
    return attention_matrix(q, k, mask) if module.eager else None


def attention_dropout(module: nn.Module) -> float:
    """The dropout rate on attention probabilities of a module with an `attention_dropout`: 0 unless training."""
    return module.attention_dropout if module.training else 0.0


class Attention(nn.Module):
    """MHA(X) = concat_h(A_h(X) X W^V_h) W^P, with W^Q, W^K, W^V in one (fused) weight."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.heads, self.fused, self.probe, self.eager = cfg.heads, True, None, False
        self.attention_dropout = cfg.attention_dropout
        self.qkv = linear(cfg.width, 3 * cfg.width, cfg.init_std)  # rows: [W^Q; W^K; W^V]
        self.proj = linear(cfg.width, cfg.width, cfg.init_std)

    def forward(self, x: Tensor, mask: KeyMask | None) -> Tensor:
        d = x.shape[-1]
        q, k, v = (split_heads(t, self.heads) for t in project(x, self.qkv, [d, d, d], self.fused))
        probs = eager_probs(self, q, k, mask)
        out = self.proj(merge_heads(attend(q, k, v, mask, self.fused, attention_dropout(self), probs)))
        if self.probe is not None:
            self.probe(q, k, mask, x, out, probs)
        return out


class ShapedAttention(nn.Module):
    """SMHA: per head (alpha_h I + beta_h A_h - gamma_h C) V_h, concatenated (docs/blocks.md).

    values: how V is made from the (normed) input X:
      'identity' - V = X, and no output projection (the simplified blocks);
      'reparam'  - V = X (alpha_V I + beta_V dW), dW = 0 at init (the first layer of the simplified blocks);
      'full'     - V = X W^V and an output projection W^P, both orthogonal at init (`vskipinit`).
    W^Q = 0 at init, so A_h = C and every head is the identity on V_h.
    with_qk=False leaves the Q/K projection to the caller (the parallel block fuses it with the MLP's).
    """

    def __init__(self, cfg: ArchConfig, values: str, with_qk: bool = True):
        super().__init__()
        d, H = cfg.width, cfg.heads
        self.heads, self.values, self.fused, self.probe, self.eager = H, values, True, None, False
        self.attention_dropout = cfg.attention_dropout
        if with_qk:
            self.qk = linear(d, 2 * d, cfg.init_std, zero_rows=d)  # rows: [W^Q; W^K], W^Q = 0
        self.alpha, self.beta, self.gamma = (nn.Parameter(torch.empty(H)) for _ in range(3))
        if values == "reparam":
            self.value_alpha = nn.Parameter(torch.empty(()))
            self.value_beta = nn.Parameter(torch.empty(()))
            self.value_delta = nn.Parameter(torch.empty(d, d))
        elif values == "full":
            self.value = Linear(d, d, cfg.init_std, orthogonal=True)
            self.proj = Linear(d, d, cfg.init_std, orthogonal=True)
        elif values != "identity":
            raise ValueError(f"values must be 'identity', 'reparam' or 'full', got {values!r}")
        self.harness_init()

    def harness_init(self) -> None:
        """Its own parameters: every head the identity on V_h (alpha = beta = gamma = 1, with W^Q = 0 making
        A_h = C); the reparametrised values start at V = X (alpha_V = beta_V = 1, dW = 0)."""
        with torch.no_grad():
            for gain in (self.alpha, self.beta, self.gamma):
                gain.fill_(1.0)
            if self.values == "reparam":
                self.value_alpha.fill_(1.0)
                self.value_beta.fill_(1.0)
                self.value_delta.zero_()

    def value_of(self, x: Tensor) -> Tensor:
        if self.values == "reparam":
            return self.value_alpha * x + self.value_beta * F.linear(x, self.value_delta)
        if self.values == "full":
            return self.value(x)
        return x

    def mix(self, q: Tensor, k: Tensor, x: Tensor, mask: KeyMask | None, gain: Tensor | None = None) -> Tensor:
        """Shaped attention of queries q and keys k (B, T, d) over the values made from x (B, T, d).

        gain: a scalar factor on the whole output (the block's beta_SA). SMHA is linear in its per-head gains
        (and W^P is linear), so it is folded into them: (H,) multiplies instead of a pass over (B, T, d).
        """
        alpha, beta, gamma = (
            (self.alpha, self.beta, self.gamma)
            if gain is None
            else (g * gain for g in (self.alpha, self.beta, self.gamma))
        )
        q, k, v = (split_heads(t, self.heads) for t in (q, k, self.value_of(x)))
        probs = eager_probs(self, q, k, mask)
        out = shaped_attend(q, k, v, alpha, beta, gamma, mask, self.fused, attention_dropout(self), probs)
        out = merge_heads(out)
        out = self.proj(out) if self.values == "full" else out
        if self.probe is not None:
            self.probe(q, k, mask, x, out, probs)
        return out

    def forward(
        self, x: Tensor, mask: KeyMask | None, gain: Tensor | None = None, qk: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """qk: queries and keys (B, T, d) the caller projected (SAS-P fuses them with the MLP's input); else
        this module's own `qk` makes them. Either way the module is called (its forward runs), so hooks on it
        (accelerate's offloading) see its parameters used."""
        q, k = qk if qk is not None else project(x, self.qk, [x.shape[-1]] * 2, self.fused)
        return self.mix(q, k, x, mask, gain)


# ----------------------------------------------------------------------------------------------- embedding


def sinusoid_table(length: int, width: int) -> Tensor:
    """The fixed (length, width) sinusoid table of Vaswani et al.: sin on even, cos on odd features."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


def orthogonal_init(weight: Tensor) -> None:
    """An orthogonal init drawn in fp32 and cast: QR has no bf16/fp16 kernel (a model built in bf16, as
    `from_config(dtype=torch.bfloat16)` does, would fail), and the fp32 draw is the same numbers as before."""
    if weight.is_meta:
        return
    with torch.no_grad():
        weight.copy_(nn.init.orthogonal_(torch.empty(weight.shape, dtype=torch.float32, device=weight.device)))


class TokenEmbedding(nn.Embedding):
    """The token table, normal(0, std) with a zero padding row; also the tied decoder (no bias): `decode=True`
    maps (..., d) hidden states to (..., V) logits with the same weight. Both uses go through this module's
    forward, so hooks on it (accelerate's offloading, an adapter) see both."""

    def __init__(self, vocab_size: int, width: int, padding_idx: int, std: float):
        super().__init__(vocab_size, width, padding_idx=padding_idx)
        self.std = std
        self.harness_init()

    def harness_init(self) -> None:
        nn.init.normal_(self.weight, std=self.std)
        with torch.no_grad():
            self.weight[self.padding_idx].zero_()

    def forward(self, x: Tensor, decode: bool = False) -> Tensor:
        """(B, T) token ids -> (B, T, d) rows; decode: (..., d) hidden states -> (..., V) logits."""
        return F.linear(x, self.weight) if decode else super().forward(x)


class Embedding(nn.Module):
    """Token embedding (padding index: the tokenizer's pad id, or row 0: arch.embedding_padding) + scaled sinusoidal
    positions, then LayerNorm."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.tokens = TokenEmbedding(cfg.vocab_size, cfg.width, cfg.padding_index, cfg.init_std)
        self.register_buffer("sinusoid", torch.empty(cfg.seq_len, cfg.width), persistent=False)  # not saved
        self.position_scale = nn.Parameter(torch.empty(()))  # learnable, init 1/sqrt(d)
        self.norm = norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.harness_init()

    def harness_init(self) -> None:
        """The position table (a buffer no folder holds: a Hugging Face load builds the module without data and
        fills it through this, model.hf) and the position scale 1/sqrt(d)."""
        with torch.no_grad():
            self.sinusoid.copy_(sinusoid_table(*self.sinusoid.shape))
            self.position_scale.fill_(self.sinusoid.shape[1] ** -0.5)

    def forward(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None) -> Tensor:
        """(B, T) token ids, or (B, T, d) token vectors in their place (a caller's `inputs_embeds`: prompt
        tuning, attribution) -> the block stack's input (B, T, d)."""
        vectors = self.tokens(input_ids) if inputs_embeds is None else inputs_embeds
        x = vectors + self.position_scale * self.sinusoid[: vectors.shape[1]]  # (B, T, d)
        return self.dropout(self.norm(x))


def set_fused(model: nn.Module, fused: bool) -> nn.Module:
    """Switch every fast path in `model` on (default) or off (plain reference path)."""
    for module in model.modules():
        if hasattr(module, "fused"):
            module.fused = fused
    return model
