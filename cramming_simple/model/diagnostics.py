"""What happens inside the blocks, measured on one batch without changing the forward pass (docs/design.md).

Per layer, on the residual stream after the block (B, T, d):
  cos       mean cosine similarity between the token representations of a sequence, over all pairs i != j
            (rank collapse: 1.0 means every token looks the same);
  kurtosis  activation outliers: with s_j = mean over tokens of x_j^2 per channel j, mean(s^2) / mean(s)^2
            (1 when every channel carries the same energy; large when a few channels dominate);
  norm      mean L2 norm of a token's vector.
Per attention sub-block (every module with a `probe` attribute, see model.layers):
  entropy       per head, the mean over queries of the entropy of softmax(q k^T / sqrt(dk)) (uniform: log T);
  attn_in_cos   token cosine similarity of the sub-block's input, attn_out_cos of its output.
And the block's learned scalars: every 0-d parameter (beta_SA, alpha_FF, beta_FF, alpha_V, beta_V, ...), every
per-head gain (alpha_h, beta_h, gamma_h) as a list, and every LayerNorm gain's mean.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .layers import KeyMask


def token_cosine(x: Tensor) -> float:
    """(B, T, d) -> mean over sequences and token pairs i != j of cos(x_i, x_j)."""
    x = x.float()
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gram = unit @ unit.transpose(-2, -1)  # (B, T, T)
    T = x.shape[1]
    off_diagonal = gram.sum(dim=(-2, -1)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)  # (B,)
    return float(off_diagonal.mean() / (T * (T - 1)))


def kurtosis(x: Tensor) -> float:
    """(B, T, d) -> mean(s^2) / mean(s)^2 with s_j the mean squared activation of channel j."""
    s = x.float().pow(2).flatten(0, -2).mean(0)  # (d,)
    return float(s.pow(2).mean() / s.mean().pow(2).clamp_min(1e-30))


def stream_stats(x: Tensor) -> dict[str, float]:
    return {"cos": token_cosine(x), "kurtosis": kurtosis(x), "norm": float(x.float().norm(dim=-1).mean())}


def attention_entropy(q: Tensor, k: Tensor, mask: KeyMask | None) -> list[float]:
    """q, k: (B, H, T, dk) -> per head, the mean entropy (nats) of the attention rows softmax(q k^T / sqrt(dk))."""
    logits = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    if mask is not None:
        logits = logits.masked_fill(~mask.allow, float("-inf"))
    probs = logits.softmax(dim=-1)
    entropy = -torch.special.xlogy(probs, probs).sum(-1)  # (B, H, T)
    return entropy.mean(dim=(0, 2)).tolist()


def learned_scalars(layer: nn.Module) -> dict[str, float | list[float]]:
    out: dict[str, float | list[float]] = {}
    for name, p in layer.named_parameters():
        if p.ndim == 0:
            out[name] = float(p)
        elif p.ndim == 1 and name.rsplit(".", 1)[-1] in ("alpha", "beta", "gamma"):
            out[name] = p.detach().float().tolist()
    for name, module in layer.named_modules():
        if isinstance(module, nn.LayerNorm) and module.weight is not None:
            out[f"{name}.weight_mean"] = float(module.weight.float().mean())
    return out


@torch.no_grad()
def measure(encoder: nn.Module, input_ids: Tensor) -> dict:
    """Run `encoder` (an Encoder, or a model with `.encoder`) on (B, T) ids; the statistics above as plain data.

    {"embedding": {cos, kurtosis, norm}, "layers": [{cos, kurtosis, norm, entropy, attn_in_cos, attn_out_cos,
    scalars}, ...]}; a layer without an attention probe has no entropy / attn_* keys.
    """
    encoder = getattr(encoder, "encoder", encoder)
    records: list[dict] = [{} for _ in encoder.layers]
    handles, probed = [], []

    def on_block(i: int):
        def hook(module, args, output):
            records[i].update(stream_stats(output))

        return hook

    def on_attention(i: int):
        def probe(q, k, mask, x, out, probs):
            if "entropy" not in records[i]:  # the first attention of a block (every shipped block has one)
                records[i].update(
                    entropy=attention_entropy(q, k, mask), attn_in_cos=token_cosine(x), attn_out_cos=token_cosine(out)
                )

        return probe

    embedding: dict = {}
    handles.append(encoder.embedding.register_forward_hook(lambda m, a, out: embedding.update(stream_stats(out))))
    for i, layer in enumerate(encoder.layers):
        handles.append(layer.register_forward_hook(on_block(i)))
        for module in layer.modules():
            if hasattr(module, "probe"):
                module.probe = on_attention(i)
                probed.append(module)
    was_training = encoder.training
    encoder.eval()
    try:
        encoder(input_ids)
    finally:
        encoder.train(was_training)
        for h in handles:
            h.remove()
        for module in probed:
            module.probe = None
    for record, layer in zip(records, encoder.layers):
        record["scalars"] = learned_scalars(layer)
    return {"embedding": embedding, "layers": records}


def at_init(cfg, blocks: list[str], batch: int = 4, seed: int = 0) -> dict[str, dict]:
    """`measure` for every block at init on the same random tokens: {block: measured}."""
    from .bert import MaskedLM  # the model is built here only; measure() itself works on any encoder

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, cfg.vocab_size, (batch, cfg.seq_len), generator=generator)  # above the special tokens
    out = {}
    for block in blocks:
        torch.manual_seed(seed)
        out[block] = measure(MaskedLM(cfg, block), ids)
    return out
