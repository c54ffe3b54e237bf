"""Parameter count of every block at an architecture preset (built on the meta device: no memory, no init).

cramming-simple params
cramming-simple params --arch tiny --json
cramming-simple params --blocks all,examples/blocks/rezero.py:ReZero   # the seven and your own
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..model import PRESETS

    parser.add_argument("--arch", default="crammed-bert", choices=sorted(PRESETS))
    parser.add_argument(
        "--blocks",
        default="all",
        help="'all' (the seven) or a comma list of block names and your own blocks (path/to/file.py:Class, "
        "module:Class, an installed entry point); 'all' inside the list: the seven",
    )
    parser.add_argument("--json", action="store_true", help='print {"<block>": {"params": int, "non_embedding": int}}')


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from ..model import MaskedLM, arch_config, count_params, load_block, parse_blocks

    cfg = arch_config(args.arch)
    specs = {ref: load_block(ref, cfg) for ref in parse_blocks(args.blocks)}
    with torch.device("meta"):  # shapes only: no memory, no init time
        counts = {ref: count_params(MaskedLM(cfg, ref)) for ref in specs}
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    table = pd.DataFrame(
        [
            {
                "block": specs[name].name,
                "title": specs[name].title,
                "params": f"{c['params'] / 1e6:.2f}M",
                "non-embedding": f"{c['non_embedding'] / 1e6:.2f}M",
            }
            for name, c in counts.items()
        ]
    )
    print(f"arch: {args.arch} (width {cfg.width}, depth {cfg.depth}, heads {cfg.heads}, vocab {cfg.vocab_size})")
    print(table.to_string(index=False))
    return 0
