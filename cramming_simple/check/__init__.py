"""A block's report card before any GPU time (`cramming-simple check-block`, docs/your-block.md).
Takes a block reference and `model`/`train`/`bench`; gives check.md and check.json.
"""

from .card import CHECKS, LIMITS, Limits, check_block, render

__all__ = ["CHECKS", "LIMITS", "Limits", "check_block", "render"]
