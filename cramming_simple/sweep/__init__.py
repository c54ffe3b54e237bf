"""Sweeps of (block x seed) here or on Slurm: the plan of what is still to do, its launchers, where every job stands.
Takes run folders and launch records; gives command lines of this program (pretrain, glue, report) as jobs.
"""

from .launch import launch
from .plan import SweepConfig, plan
from .status import last_sweep, status

__all__ = ["SweepConfig", "last_sweep", "launch", "plan", "status"]
