"""The AdamW every stage uses: the recipe's no-decay groups (or the published runs' rule by name), with torch's
fused kernel where the device has one."""

from __future__ import annotations

import torch
from torch import nn

FUSED_DEVICES = ("cuda", "cpu")  # fused AdamW kernels in torch >= 2.4 (pyproject pins torch >= 2.4)


DECAY_RULES = ("ndim", "names")  # train.decay_rule
# names: cramming's `limited_decay_keys` (any parameter whose name contains one is not decayed) ...
CRAMMING_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight", "norm")
# ... and the blocks' gains, which the official simplified-blocks code keeps out of weight decay by name ("gain")
# and the paper states are not decayed; ours are named after the paper's symbols.
GAINS = ("alpha", "beta", "gamma", "beta_sa", "alpha_ff", "beta_ff", "value_alpha", "value_beta")


def decays(name: str, param: nn.Parameter, rule: str = "ndim") -> bool:
    """Whether weight decay applies to a parameter. ndim: every tensor with 2 or more dimensions (matrices,
    embeddings); biases, norms, gains and the position scale are not decayed. names: by name, as the code
    behind the published numbers did; the same split except that the position scale is decayed."""
    if rule == "ndim":
        return param.ndim >= 2
    if rule == "names":
        return not any(key in name for key in CRAMMING_NO_DECAY) and name.rsplit(".", 1)[-1] not in GAINS
    raise ValueError(f"decay rule must be one of {DECAY_RULES}, got {rule!r}")


def param_groups(model: nn.Module, weight_decay: float, rule: str = "ndim") -> list[dict]:
    """Two AdamW groups: the parameters that decay (`decays`) and those that do not."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in params if decays(n, p, rule)], "weight_decay": weight_decay},
        {"params": [p for n, p in params if not decays(n, p, rule)], "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-12,
    device: torch.device | str = "cpu",
    decay_rule: str = "ndim",
) -> torch.optim.AdamW:
    """AdamW over `param_groups` (no decay on biases, norms, scalar gains); defaults: the recipe's (docs/recipe.md).

    fused=True runs the whole update as one kernel per dtype/device instead of a Python loop over tensors:
    at crammed-bert size on 2 CPU cores it takes 0.08 s instead of 0.43 s (for-loop) or 0.30 s (foreach),
    and on CUDA it saves the many small launches of the foreach path. Same maths, same state.
    """
    fused = torch.device(device).type in FUSED_DEVICES
    return torch.optim.AdamW(param_groups(model, weight_decay, decay_rule), lr=lr, betas=betas, eps=eps, fused=fused)
