"""Prepare a budget's pretraining data ahead of time (tokenizer, packed shards); runs reuse it.

Preparation is not budget time, but doing it ahead keeps a GPU from idling while text is tokenised.
Examples:
  cramming-simple data --budget 24h
  cramming-simple data --budget 24h --reference rtx3090-notrainnogain   # sized to what that budget reads
  cramming-simple data --budget smoke data.source=text data.files='[corpus/*.txt]'
"""

from __future__ import annotations

import argparse

from ..presets import list_presets


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--budget", default="24h", help=f"a budgets/ preset ({', '.join(list_presets('budgets'))}) or a YAML path"
    )
    p.add_argument(
        "--reference",
        metavar="NAME|PATH",
        help="as pretrain's: a reference budget, whose data is sized to what it reads (unless data.max_sequences)",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.max_sequences=1000000"
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from ..data import PackedData, prepare
    from ..train.budget import data_passes_note, sized_data_note
    from ..train.config import PretrainConfig

    cfg = PretrainConfig.from_budget(args.budget, None, args.overrides, reference=args.reference)
    note = sized_data_note(cfg)
    if note:
        logging.getLogger(__name__).info(note)
    prepared = prepare(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len)
    PackedData(prepared.path, verify=True)  # read back: checksums and shapes as a run will see them
    m = prepared.manifest
    passes = data_passes_note(cfg, m["sequences"])
    if passes:
        logging.getLogger(__name__).info(passes)
    state = "reused" if prepared.reused else f"prepared in {m['seconds']:.0f} s"
    print(
        f"{prepared.path}: {m['sequences']} sequences of {m['seq_len']} tokens ({m['documents']} documents, "
        f"{len(m['shards'])} shards, tokenizer of {m['tokenizer_size']} tokens), {state}"
    )
    return 0
