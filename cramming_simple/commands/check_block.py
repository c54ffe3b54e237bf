"""A block's report card before any GPU time: shapes and dtypes, padding invariance, NaN/inf, gradients,
parameters, signal propagation at init, trainability and speed against Pre-LN, torch.compile (docs/your-block.md).

Writes check.md, check.json and signal.png / signal.pdf to --out (default reports/check/<block>). Exit code 0 when
no line fails (warnings included), 1 when one does; a block that cannot be imported, built or run on a small
input stops in seconds with one line (exit 2).

examples:
  cramming-simple check-block examples/blocks/rezero.py:ReZero
  cramming-simple check-block sas --arch tiny --skip speed,compile
  cramming-simple check-block my_package.blocks:MyBlock --arch crammed-bert arch.depth=24 --steps 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..check import CHECKS
    from ..model import PRESETS
    from ..runtime import PRECISIONS

    parser.add_argument(
        "block", metavar="BLOCK", help="a built-in name, path/to/file.py:Class, package.module:Class or an entry point"
    )
    parser.add_argument("--arch", default="crammed-bert", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch (default 8)")
    parser.add_argument("--steps", type=int, default=60, help="trainability: smoke-recipe steps per block (default 60)")
    parser.add_argument("--speed-steps", type=int, default=5, help="speed: timed steps per block (default 5)")
    parser.add_argument("--skip", default="", help=f"comma list of checks to leave out: {', '.join(CHECKS)}")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="compile the speed bench's steps"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: reports/check/<block>)")
    parser.add_argument("--json", action="store_true", help="print check.json instead of the card")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="arch.* (e.g. arch.depth=24) changes the checked arch; data.* / train.* the smoke budget whose text and "
        "recipe the checks use (e.g. data.cache_dir=...)",
    )


def arch_of(preset: str, overrides: list[str]):
    """The arch to check: the preset with the arch.* overrides (data.* and train.* go to the smoke budget)."""
    from omegaconf import OmegaConf

    from ..config import dotlist
    from ..model import arch_config

    arch = [o for o in overrides if o.startswith("arch.")]
    other = [o for o in overrides if not o.startswith(("arch.", "data.", "train."))]
    if other:
        raise ConfigError(f"override {other[0]}: check-block takes arch.*, data.* and train.* keys")
    typed = OmegaConf.to_container(dotlist(arch)).get("arch", {})
    return arch_config(preset, **typed)


def smoke_data(args: argparse.Namespace, cfg):
    """The smoke budget (its data.* and train.* overrides) and its prepared text, which must fit the arch."""
    from ..data import check_tokenizer, load_tokenizer, prepare
    from ..reference import BASELINE
    from ..train.config import PretrainConfig

    smoke = PretrainConfig.from_budget("smoke", BASELINE, [o for o in args.overrides if not o.startswith("arch.")])
    prepared = prepare(smoke.data, smoke.arch.vocab_size, smoke.arch.seq_len)
    tokenizer = load_tokenizer(prepared.tokenizer_dir)
    check_tokenizer(tokenizer, smoke.arch.vocab_size)
    if len(tokenizer) > cfg.vocab_size or smoke.arch.seq_len > cfg.seq_len:
        raise ConfigError(
            f"the smoke text ({len(tokenizer)} token ids, {smoke.arch.seq_len} per row) does not fit arch "
            f"{args.arch} (vocab {cfg.vocab_size}, seq_len {cfg.seq_len})"
        )
    return smoke, prepared


def run(args: argparse.Namespace) -> int:
    from ..check import CHECKS, check_block, render
    from ..check.card import load_text
    from ..model import load_block
    from ..report.plots import block_signal_plot
    from ..runtime import compile_default, pick_device, write_json

    skip = tuple(s.strip() for s in args.skip.split(",") if s.strip())
    unknown = sorted(set(skip) - set(CHECKS))
    if unknown:
        raise ConfigError(f"--skip: unknown check(s) {unknown}; valid: {', '.join(CHECKS)}")
    if args.batch < 2 or args.steps < 1 or args.speed_steps < 1:
        raise ConfigError("--batch must be at least 2 (padding check), --steps and --speed-steps at least 1")
    cfg = arch_of(args.arch, args.overrides)
    spec = load_block(args.block, cfg)  # a broken block stops here, in seconds, before any data
    smoke, prepared = smoke_data(args, cfg)
    device = pick_device(args.device)
    compile_model = compile_default(device) if args.compile is None else args.compile
    text = load_text(smoke, prepared.path, args.batch, args.seed)
    result = check_block(
        spec.ref,
        cfg,
        smoke,
        text,
        device,
        args.precision,
        args.steps,
        args.speed_steps,
        skip,
        args.seed,
        compile_speed=compile_model,
    )
    out = Path(args.out or f"reports/check/{spec.name}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "check.json", result)
    (out / "check.md").write_text(render(result))
    if "signal" in result:
        block_signal_plot(result["signal"], out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
        print(
            f"wrote {out / 'check.md'}, {out / 'check.json'}" + (" and signal.png/.pdf" if "signal" in result else "")
        )
    return 1 if result["verdict"] == "fail" else 0
