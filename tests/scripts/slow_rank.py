"""Run under torchrun: rank 1's microbatches take longer; each rank writes its own final summary.

usage: torchrun --nproc_per_node 2 tests/scripts/slow_rank.py OUT_DIR SLEEP_S -- <pretrain CLI args>
"""

import json
import os
import sys
import time
from pathlib import Path

from cramming_simple.cli import build_parser
from cramming_simple.commands.pretrain import resolve
from cramming_simple.model import MaskedLM
from cramming_simple.train import loop

out, sleep_s, args = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[sys.argv.index("--") + 1 :]
rank = int(os.environ["RANK"])
if rank == 1:
    forward = MaskedLM.forward

    def slow_forward(self, *a, **k):
        time.sleep(sleep_s)
        return forward(self, *a, **k)

    MaskedLM.forward = slow_forward

parsed = build_parser("pretrain").parse_args(args)
summary = loop.pretrain(resolve(parsed), parsed.runs_dir, resume=parsed.resume)
(out / f"rank{rank}.json").write_text(json.dumps(summary))
