"""Time the baseline (Pre-LN) training step here at a budget's settings: its rate with a 95 % interval, and the hours
here that each known reference's budget maps to (docs/recipe.md, "Budgets on other hardware").

  cramming-simple calibrate --budget 24h                          every known reference, mapped to hours here
  cramming-simple calibrate --budget 24h --reference rtx3090-notrainnogain
  cramming-simple calibrate --budget 24h --json > h100.json       this device's figure as a reference entry
  cramming-simple calibrate --budget 24h --save my-2080ti train.microbatch=64 impl.precision=fp16
Rounds are timed until the rate's interval is within +-impl.calibration_target (3 %) or for
impl.calibration_seconds (180) of timed rounds. `--save NAME` keeps the figure as your own reference, for
`pretrain --reference NAME` on other machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from ..presets import list_presets

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--budget", default="24h", help=f"a budgets/ preset ({', '.join(list_presets('budgets'))}) or a YAML path"
    )
    p.add_argument("--reference", metavar="NAME|PATH", help="map the budget onto this reference only")
    p.add_argument("--save", metavar="NAME", help="keep this device's figure as your reference NAME (user data folder)")
    p.add_argument(
        "--json", action="store_true", help="print this device's figure as one reference entry with rate_low/high"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.microbatch=64 impl.compile=false"
    )


def run(args: argparse.Namespace) -> int:
    from ..console import stdout_for_results
    from ..hardware import ReferenceBudget, find_reference, known_references, save_reference, short_device
    from ..markdown import table
    from ..runtime import pick_device
    from ..train.budget import calibration_settings, measure
    from ..train.config import PretrainConfig

    if args.json:
        stdout_for_results()
    cfg = PretrainConfig.from_budget(args.budget, None, args.overrides)
    refs = [find_reference(args.reference)] if args.reference else list(known_references().values())
    device = pick_device(cfg.impl.device)
    calibration = measure(cfg, device, calibration_settings(cfg, device))
    command = " ".join(["cramming-simple", "calibrate", *sys.argv[2:]]) if sys.argv[1:2] == ["calibrate"] else None
    entry = calibration.as_reference(args.save or "local", command)
    if args.save:
        log.info(f"saved as reference {args.save}: {save_reference(entry)} (pretrain --reference {args.save})")
    if args.json:
        print(json.dumps({**asdict(entry), "rate_low": calibration.low, "rate_high": calibration.high}, indent=2))
        return 0
    c = calibration
    print(
        f"Pre-LN on {c.device}, {c.arch}, microbatch {c.microbatch}, {c.precision}, "
        f"{'compiled' if c.compiled else 'eager'}: {c.rate:.4g} microbatches/s [{c.low:.4g}, {c.high:.4g}] "
        f"(95 % interval, {c.rounds} rounds of {c.accumulate} microbatches and an update, {c.seconds:g} s, "
        f"stopped by {c.stopped_by})"
    )
    rows = []
    for ref in refs:
        differ = ref.mismatch_text(c.arch, c.microbatch, c.seq_len)
        budget = ReferenceBudget.of(ref)
        here = [budget.hours_here(cfg.hours, rate) for rate in (c.rate, c.high, c.low)]
        here = f"not comparable: measured at {differ}" if differ else f"{here[0]:.3g} h [{here[1]:.3g}, {here[2]:.3g}]"
        rows.append([ref.name, short_device(ref.device, ref.estimate), f"{ref.preln_microbatches_per_s:.4g}", here])
    columns = ["reference", "device", "its Pre-LN microbatches/s", f"{cfg.budget} ({cfg.hours:g} h) there = here"]
    print(table(columns, rows, left=columns[:2]))
    return 0
