"""Reference budgets the tests calibrate and save."""

from __future__ import annotations

HOURS = "hours=0.0004"  # reference hours: about 3 s here at twice the local rate


HOLDOUT = "data.holdout=64"
