"""How things run, kept out of the models, one concern per module:

- `device`: device, precision and autocast, torch.compile with its eager fallback, seeds, the environment;
- `files`: atomic writes, JSON, JSON lines, the temporaries killed writers leave, a full disk;
- `locks`: flock locks on run folders and caches, processes that die with their parent;
- `progress`: progress bars and log lines, timers, timestamps.

Everything is importable from `cramming_simple.runtime` itself.
"""

from .device import (
    CPU_COMPILE_OPTIONS,
    PRECISIONS,
    CompiledModule,
    autocast,
    autocast_dtype,
    compile_default,
    compile_model,
    cpu_has_bf16,
    device_name,
    environment,
    keep_freed_memory,
    pick_device,
    precision_name,
    rng_state,
    seed_everything,
    set_rng_state,
    slurm_job,
)
from .files import (
    FILE_MODE,
    TEMPORARY,
    append_jsonl,
    atomic_write,
    atomic_write_bytes,
    commit_temporary,
    file_sha256,
    fsync_folder,
    read_json,
    remove_stale_temporaries,
    write_json,
    write_temporary,
    writer_tag,
)
from .locks import FileLock, die_with_parent, node_local_locks, pid_alive
from .progress import Progress, now_iso, timed

__all__ = [
    "CPU_COMPILE_OPTIONS",
    "FILE_MODE",
    "PRECISIONS",
    "TEMPORARY",
    "CompiledModule",
    "FileLock",
    "Progress",
    "append_jsonl",
    "atomic_write",
    "atomic_write_bytes",
    "autocast",
    "autocast_dtype",
    "commit_temporary",
    "compile_default",
    "compile_model",
    "cpu_has_bf16",
    "device_name",
    "die_with_parent",
    "environment",
    "file_sha256",
    "fsync_folder",
    "keep_freed_memory",
    "now_iso",
    "pick_device",
    "node_local_locks",
    "pid_alive",
    "precision_name",
    "read_json",
    "remove_stale_temporaries",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "slurm_job",
    "timed",
    "write_json",
    "write_temporary",
    "writer_tag",
]
