"""Sweeps of (block x seed) on one machine or a Slurm cluster: the plan (`plan`) and its launchers (`launch`)."""

from .launch import launch, status
from .plan import SweepConfig, plan

__all__ = ["SweepConfig", "launch", "plan", "status"]
