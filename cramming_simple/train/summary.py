"""What a pretraining run's summary.json holds (runs.py): the run's facts, its counters and how it ended. Written
with every checkpoint (which carries it too) and at the end of the run."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from ..model import count_params, unwrap
from ..profiles import profile_of
from ..runs import CHECKPOINT
from ..runtime import environment, now_iso, precision_name, slurm_job

if TYPE_CHECKING:
    from .loop import Trainer


def run_summary(t: Trainer, completed: bool, stop_reason: str | None) -> dict:
    """The summary of trainer `t` as it stands (its state's timers as the clock last stamped them)."""
    cfg, st = t.cfg, t.state
    counts = count_params(unwrap(t.model))
    return {
        "name": cfg.name,
        "block": cfg.block,
        "block_title": unwrap(t.model).encoder.spec.title,
        "block_source": cfg.block_source,  # where a user's block came from, with its source's sha256
        "arch": asdict(cfg.arch),
        "budget": cfg.budget,
        "budget_hours": cfg.hours,  # on the reference device when `reference` says so
        "reference": asdict(cfg.reference) if cfg.reference else None,  # its calibration: local_hours here
        "profile": profile_of("pretrain", asdict(cfg)),  # clean | published | mixed (...): docs/recipe.md
        "params": counts["params"],
        "non_embedding_params": counts["non_embedding"],
        "microbatch": cfg.train.microbatch,
        "microbatch_steps": st.microbatch_steps,
        "optimizer_steps": st.optimizer_steps,
        "tokens": st.tokens,
        "elapsed_s": st.elapsed_s,
        "final_loss": st.last_loss,  # mean loss of the last log window (a short tail joins the window before it)
        "eval_loss": st.eval_loss if st.eval_step == st.optimizer_steps else None,  # held-out, of the final model
        "eval_sequences": t.data.split.held,
        "eval_s": round(st.eval_s, 3),  # evaluation and snapshots: outside the budget
        "snapshots": st.snapshots,
        **environment(t.device),
        "world_size": t.dist.world,
        "slurm": slurm_job(),  # the Slurm job (id, partition, node, requeues), None outside Slurm
        "hardware": st.hardware,  # [{device, node, from_step}]: more than one when a resume moved it
        "precision": precision_name(t.dtype),
        "compiled": t.step.compiled,
        "data": {**cfg.data.describe(), **t.data_identity, "sequences": len(t.data.stream.data)},
        "amendments": cfg.amendments,  # recipe changes accepted on a resume (--extend-budget)
        "completed": completed,
        "stop_reason": stop_reason,
        "projected_microbatch_steps": st.projected_steps,  # at p = 1, from the calibration or the first minute
        "capped_at_p": st.capped_at_p,  # where train.max_microbatches / max_steps stopped it (None: they did not)
        "checkpoint": CHECKPOINT if t.checkpointer.exists else None,
        "started_at": t.started_at,
        "finished_at": now_iso(),
    }
