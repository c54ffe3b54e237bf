"""ReZero (Bachlechner et al., 2020) as a cramming-simple block: no norms, every residual branch scaled by a
trainable gain that starts at zero, so each block is the identity at init.

    X' = X + g_SA * MHA(X);  Y = X' + g_FF * MLP(X'),   g_SA = g_FF = 0 at init

    cramming-simple check-block examples/blocks/rezero.py:ReZero --arch tiny
    cramming-simple pretrain --block examples/blocks/rezero.py:ReZero --budget smoke

The gains are named beta_sa / beta_ff, the harness's names for branch gains: they stay out of weight decay under
both decay rules and appear in the learned-scalar plots. Attention and the GLU MLP are the harness's own
(model.layers), so the comparison with Pre-LN changes only the norms and the gains.
"""

import torch
from torch import Tensor, nn

from cramming_simple.model import ArchConfig, KeyMask
from cramming_simple.model.layers import GLU, Attention


class ReZero(nn.Module):
    title = "ReZero"  # the block's name in tables and figures
    # lr / weight_decay are left to the default (Pre-LN's recipe: 1e-3 and 0.01)

    def __init__(self, cfg: ArchConfig, layer: int):
        super().__init__()
        self.attn, self.mlp = Attention(cfg), GLU(cfg)
        self.beta_sa = nn.Parameter(torch.zeros(()))
        self.beta_ff = nn.Parameter(torch.zeros(()))
        self.drop = nn.Dropout(cfg.dropout)  # 0 in pretraining; GLUE fine-tuning sets it

    def forward(self, x: Tensor, mask: KeyMask | None) -> Tensor:
        # x: (B, T, d) residual stream; mask: the key-padding mask (None: no padding)
        x = x + self.beta_sa * self.drop(self.attn(x, mask))
        return x + self.beta_ff * self.drop(self.mlp(x))  # (B, T, d)
