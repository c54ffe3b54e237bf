"""Checkpoints: written atomically, the previous one kept, checked when read back; and the trainer's
`Checkpointer`, which owns what a checkpoint holds, its summary, restoring and the fallback.

Writing: the new checkpoint goes to a uniquely named temporary file and is fsynced. Only then does the
checkpoint it replaces become `checkpoint.prev.pt` (a hard link to it renamed onto that name) and the new file
is renamed over `checkpoint.pt`: at every instant `checkpoint.pt` is a complete checkpoint, a kill while writing
leaves the two generations as they were, and the disk never holds more than two besides the one being written.

Reading: torch.load does not check the zip container's CRCs (a flipped bit loads silently as a wrong
weight), so `load_checkpoint` checks them first; any damage raises `UnreadableCheckpoint` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ConfigError, CorruptFileError, UserError
from ..runs import CHECKPOINT, PREV_CHECKPOINT, SUMMARY
from ..runtime import commit_temporary, rng_state, set_rng_state, write_json, write_temporary, writer_tag


class UnreadableCheckpoint(CorruptFileError):
    """A checkpoint that is truncated, damaged, or does not fit the run."""


def state_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state: about the size the checkpoint file will have."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def save_checkpoint(
    path: str | Path,
    state: dict,
    previous: str | Path | None = None,
    before_commit: Callable[[], None] | None = None,
) -> None:
    """Write `state` to `path` atomically; the checkpoint it replaces becomes `previous` (when given).

    The new checkpoint is written completely (a temporary file, fsynced) before anything is renamed, so a kill
    while writing leaves both generations as they were. `before_commit` runs between the two (the run's summary:
    a summary that cannot be written, e.g. on a full disk, cancels the checkpoint, so the two never disagree).
    Pass `previous=None` when the current file is known to be damaged: the good previous one then stays.
    """
    path = Path(path)
    tmp = write_temporary(path, lambda f: torch.save(state, f), size_hint=state_bytes(state))
    try:
        if before_commit is not None:
            before_commit()
        if previous is not None and path.exists():
            prev = Path(previous)
            link = prev.with_name(f".{prev.name}.{writer_tag()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            try:
                os.link(path, link)
                os.replace(link, prev)  # prev and current are one file until the rename below, two syscalls later
            except OSError:  # a file system without hard links: rename (current is absent until the rename below)
                with contextlib.suppress(OSError):
                    os.unlink(link)
                os.replace(path, prev)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    commit_temporary(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint after checking its container; `UnreadableCheckpoint` says what is wrong with it."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every member and checks its CRC
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise UnreadableCheckpoint(path, f"not a complete checkpoint, probably truncated ({err})") from None
    if damaged is not None:
        raise UnreadableCheckpoint(path, f"damaged: CRC mismatch in {damaged}")
    try:
        # Our own file: it holds RNG states (numpy, python) besides tensors, so not weights_only.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - whatever torch.load trips on, the file is not usable
        raise UnreadableCheckpoint(
            path, f"cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None


class Checkpointer:
    """A run's checkpoints: what one holds, writing it together with the summary that describes it, restoring
    from `checkpoint.pt` (or from `checkpoint.prev.pt` when that one is damaged), and which step is on disk.

    Every rank takes part (rank 0 writes; all learn whether the write succeeded, so a full disk stops them alike).
    `parts`: name -> object with state_dict / load_state_dict (model, optimizer, scaler); `extra`: recorded with
    every checkpoint (the block, the data identity); `check`: called with a restored checkpoint before anything
    is loaded from it, to refuse one that does not belong to this run (its data, say).
    """

    def __init__(
        self,
        run_dir: Path,
        dist,
        parts: dict[str, Any],
        extra: dict,
        state_type: Callable[..., Any] = dict,
        check: Callable[[dict], None] = lambda ckpt: None,
        warn: Callable[[str], None] = print,
    ):
        """`state_type(**ckpt["state"])` makes the restored counters (a checkpoint whose counters do not fit it is
        unreadable, and the previous generation is tried)."""
        self.run_dir, self.dist, self.parts, self.extra = run_dir, dist, parts, extra
        self.state_type, self.check, self.warn = state_type, check, warn
        self.path, self.previous = run_dir / CHECKPOINT, run_dir / PREV_CHECKPOINT
        self.keep_previous = True  # False while checkpoint.pt is known to be damaged: the good prev must stay
        self.saved_step = -1  # microbatch step of the checkpoint on disk
        self.exists = False

    def restore(self) -> dict | None:
        """The newest readable checkpoint, loaded into the parts and this process's RNGs; returns it, its "state"
        made by `state_type`, or None when there is none. Neither file readable: UserError."""
        tried: list[UnreadableCheckpoint] = []
        for path in (self.path, self.previous):
            if not path.exists():
                continue
            try:
                ckpt = self._load_into_parts(load_checkpoint(path), path)
            except UnreadableCheckpoint as err:
                tried.append(err)
                continue
            for err in tried:
                self.warn(
                    f"cannot resume from {err}; resumed from {path.name} instead (the work since it is "
                    "redone, not charged twice)"
                )
                self.keep_previous = False  # the next checkpoint replaces the damaged file; the good prev stays
            self.saved_step, self.exists = ckpt["state"].microbatch_steps, True
            return ckpt
        if tried:
            raise UserError(
                f"cannot resume {self.run_dir}: "
                + "; ".join(f"{e.path.name} {e.reason}" for e in tried)
                + ". Start over with --name NEW (or move the folder away)"
            )
        return None

    def _load_into_parts(self, ckpt: dict, path: Path) -> dict:
        if not isinstance(ckpt, dict) or "world_size" not in ckpt:
            raise UnreadableCheckpoint(path, "is not a pretraining checkpoint (no world_size)")
        if ckpt["world_size"] != self.dist.world:
            raise ConfigError(
                f"checkpoint was written by {ckpt['world_size']} processes, this run has {self.dist.world}: resume "
                "with the same number"
            )
        self.check(ckpt)  # before anything is loaded: a checkpoint of other data is refused, not unreadable
        try:
            for name, part in self.parts.items():
                part.load_state_dict(ckpt[name])
            ckpt["state"] = self.state_type(**ckpt["state"])
            rng = ckpt["rng"][self.dist.rank] if self.dist.rank < len(ckpt["rng"]) else ckpt["rng"][0]
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UnreadableCheckpoint(
                path, f"does not fit this run ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            ) from None
        set_rng_state(rng)
        return ckpt

    def unchanged(self, microbatch_steps: int) -> bool:
        """Nothing new since the last good checkpoint (e.g. preempted right after one)."""
        return self.saved_step == microbatch_steps and self.keep_previous

    def save(self, state: dict, summary: dict) -> None:
        """Write a checkpoint of `state` (the counters) and, with it, `summary` (summary.json beside it; a resume
        repairs summary.json from the copy inside). Unchanged since the last one: only the summary."""
        unchanged = self.unchanged(state["microbatch_steps"])
        rngs = [rng_state()]
        if self.dist.world > 1 and not unchanged:
            rngs = [None] * self.dist.world
            torch.distributed.all_gather_object(rngs, rng_state(), group=self.dist.group)
        error = None
        if self.dist.main:
            try:
                if unchanged:
                    self.write_summary(summary)
                else:
                    content = {name: part.state_dict() for name, part in self.parts.items()}
                    content.update(state=state, rng=rngs, world_size=self.dist.world, summary=summary, **self.extra)
                    save_checkpoint(  # the summary is written once the checkpoint is complete, just before its rename
                        self.path,
                        content,
                        previous=self.previous if self.keep_previous else None,
                        before_commit=lambda: self.write_summary(summary),
                    )
                self.exists = True
            except Exception as err:  # noqa: BLE001 - re-raised below, once the other ranks know
                error = err
        self.dist.fail_together(error)
        self.keep_previous, self.saved_step = True, state["microbatch_steps"]

    def write_summary(self, summary: dict) -> None:
        """summary.json: the trainer's one way of writing it (rank 0)."""
        write_json(self.run_dir / SUMMARY, summary)
