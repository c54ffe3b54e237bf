"""cramming_simple/sweep/options.py: typed Slurm options with defaults by kind of job."""

from __future__ import annotations

import re

import pytest

from cramming_simple.config import ConfigError
from cramming_simple.sweep.options import JobOptions, SlurmOptions


def test_slurm_options_are_typed_and_go_to_their_kind_of_job_with_defaults_by_kind():
    options = SlurmOptions.parse(
        [
            "partition=gpu",
            "gpus_per_node=8",
            "nodes=2",
            "setup=module load cuda/12.4",
            "setup=source .venv/bin/activate",
            "srun_args=--cpu-bind=none --mpi=pmix",
            "pretrain.exclusive=true",
            "glue.time=120",
            "additional_parameters.reservation=lab",
            "glue.additional_parameters.qos=short",
            "python=apptainer exec image.sif python",
        ]
    )
    pretrain, glue, report = (options.parameters(kind, budget_hours=24) for kind in ("pretrain", "glue", "report"))
    # the budget's 24 h plus a margin (x 1.15 + 30 min), not two days for everything
    assert pretrain["timeout_min"] == 1686 and glue["timeout_min"] == 120 and report["timeout_min"] == 60
    assert pretrain["nodes"] == 2 and "nodes" not in glue and "nodes" not in report  # plain nodes: pretraining's
    assert pretrain["gpus_per_node"] == 8 and glue["gpus_per_node"] == 1 and "gpus_per_node" not in report
    assert pretrain["cpus_per_task"] == 64 and glue["cpus_per_task"] == 8  # 8 CPUs per GPU unless given
    assert pretrain["slurm_exclusive"] is True and "slurm_exclusive" not in glue  # #SBATCH --exclusive
    assert pretrain["slurm_setup"] == ["module load cuda/12.4", "source .venv/bin/activate"]  # in order
    assert pretrain["slurm_srun_args"] == ["--cpu-bind=none", "--mpi=pmix"]  # shell words, not characters
    assert pretrain["slurm_additional_parameters"] == {"reservation": "lab"}
    assert glue["slurm_additional_parameters"] == {"reservation": "lab", "qos": "short"}
    assert options.executor("pretrain") == {
        "slurm_max_num_timeout": 30,
        "slurm_python": "apptainer exec image.sif python",
    }
    assert options.executor("glue")["slurm_max_num_timeout"] == 3  # a GLUE job that times out 3 times is stuck
    assert "slurm_exclusive" not in SlurmOptions.parse(["exclusive=false"]).parameters("pretrain", 1)
    assert SlurmOptions.parse(["exclusive=user"]).parameters("pretrain", 1)["slurm_exclusive"] == "user"
    # each kind's options are a typed dataclass: values converted by their field's type
    typed = options.by_kind["pretrain"]
    assert isinstance(typed, JobOptions) and typed.exclusive is True and options.by_kind[""].nodes == 2
    assert options.by_kind["glue"].time == 120 and options.by_kind[""].srun_args == ["--cpu-bind=none", "--mpi=pmix"]
    for bad, said in (
        (["time=abc"], "time=abc: an integer (minutes)"),
        (["gpus_per_node=0"], "must be positive"),
        (["use_srun=maybe"], "true or false"),
        (["gpu.time=5"], "a prefix names a kind of job"),
        (["nope=1"], "not an option here"),
        (["dependency=afterok:1"], "the sweep sets dependency"),
        (["additional_parameters.dependency=x"], "the sweep sets --dependency itself"),
        (["partition"], "KEY=VALUE"),
        (["tasks_per_node=8", "gpus_per_node=8"], "tasks_per_node must be 1 with GPUs"),
    ):
        with pytest.raises(ConfigError, match=re.escape(said)):
            SlurmOptions.parse(bad)
