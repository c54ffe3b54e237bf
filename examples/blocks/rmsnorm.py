"""Pre-LN with RMSNorm (Zhang & Sennrich, 2019) in place of LayerNorm: the same block, without the mean
subtraction and the bias of the norms.

    X' = X + MHA(RMSNorm1 X);  Y = X' + MLP(RMSNorm2 X')

    cramming-simple check-block examples/blocks/rmsnorm.py:PreRMSNorm --arch tiny
    cramming-simple pretrain --block examples/blocks/rmsnorm.py:PreRMSNorm --budget smoke

Only the block's two norms change; the encoder's embedding norm and final norm stay LayerNorms.
"""

from torch import Tensor, nn

from cramming_simple.model import ArchConfig, KeyMask
from cramming_simple.model.layers import GLU, Attention


class PreRMSNorm(nn.Module):
    title = "Pre-RMSNorm"
    lr = 1e-3  # the peak of the budget triangle (here the same as Pre-LN's; shown as an example)
    weight_decay = 0.01

    def __init__(self, cfg: ArchConfig, layer: int):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.norm2 = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.attn, self.mlp = Attention(cfg), GLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: KeyMask | None) -> Tensor:
        # x: (B, T, d) residual stream; mask: the key-padding mask (None: no padding)
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.mlp(self.norm2(x)))  # (B, T, d)
