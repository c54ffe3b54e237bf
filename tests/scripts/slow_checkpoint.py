"""Write checkpoint A, then start writing checkpoint B so slowly that the test can SIGKILL us mid-write.

usage: python tests/scripts/slow_checkpoint.py PATH
"""

import sys
import time

import torch

from cramming_simple.train import checkpoint

path = sys.argv[1]
checkpoint.save_checkpoint(path, {"which": "A", "weights": torch.arange(10.0)})
real_save = torch.save


def slow_save(obj, f, *args, **kwargs):
    f.write(b"partial bytes of checkpoint B")  # a torn file, then hang mid-write
    f.flush()
    print("writing", flush=True)
    time.sleep(600)


torch.save = slow_save
checkpoint.save_checkpoint(path, {"which": "B", "weights": torch.zeros(10)})
