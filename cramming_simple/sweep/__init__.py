"""Sweeps of (block x seed) on one machine or a Slurm cluster: the plan (`plan`), its launchers (`launch`) and
where every job stands (`status`)."""

from .launch import launch
from .plan import SweepConfig, plan
from .status import last_sweep, status

__all__ = ["SweepConfig", "last_sweep", "launch", "plan", "status"]
