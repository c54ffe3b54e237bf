"""Time full training steps of every block side by side, in one process (or, with --data, a budget's data path
against its training step). Writes bench.md and bench.json (bench_data.* with --data) to --out.

A training step is the trainer's own (train.step.TrainStep): forward with the sparse-prediction MLM loss,
backward, gradient clipping, AdamW step, zero_grad. Blocks take turns round by round, in an order rotated every
round, so drift of the machine hits all alike; the first --warmup rounds (compile, allocator warm-up) are not
timed, and rounds are added until every block's ratio to preln has a 95 % interval narrower than
--precision-target (or --max-minutes). Reported per block: median steps/s and tokens/s, the paired ratio to
preln (always timed) with its interval, spread, peak memory, parameters, TFLOP/s, the matmul ceiling (the
step's matrix products alone, as bare matmuls timed in the same rounds) and matmul efficiency, and MFU on GPUs
whose dense bf16 peak is known. `--peer hf` adds Hugging Face's BertForMaskedLM of the same size; `--profile`
adds where a step's time goes (torch.profiler, by kind of operator). docs/speed.md explains it all.

  cramming-simple bench --arch crammed-bert --peer hf --compile
  cramming-simple bench --arch crammed-bert --blocks sasp --compile --profile
  cramming-simple bench --data --budget smoke train.microbatch=128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from ..model import BLOCKS, PRESETS
from ..reference import BASELINE
from ..runtime import PRECISIONS

PRECISION_TARGET = 0.03  # half-width of each ratio's 95 % interval (docs/speed.md)
MAX_MINUTES = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..bench import COMPILE_WARMUP

    parser.add_argument("--arch", default="crammed-bert", choices=sorted(PRESETS))
    parser.add_argument(
        "--blocks",
        default="all",
        help=f"'all' or a comma list of {', '.join(BLOCKS)} and your own blocks (path/to/file.py:Class, "
        f"module:Class, an installed entry point; 'all' inside the list: the seven); {BASELINE} is always timed",
    )
    parser.add_argument("--batch", type=int, help="sequences per step (default: 128 on CUDA, 8 on CPU)")
    add_round_arguments(parser)
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"untimed steps per block first (default: 10 on CUDA, 2 on CPU; at least {COMPILE_WARMUP} with --compile)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="autocast dtype; auto: bf16 on CUDA and on CPUs with native bf16 (AMX, AVX-512 BF16, Arm BF16), else fp32",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile every model, as pretraining does "
        "(default: on for CUDA, off for CPU; warm-up absorbs compile time)",
    )
    parser.add_argument(
        "--peer", choices=["hf"], help="also time Hugging Face BertForMaskedLM of the same size (row 'hf-bert')"
    )
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=2,
        default=0,
        metavar="STEPS",
        help="after timing, profile STEPS (default 2) steps of every row with torch.profiler: time per kind of "
        "operator (matmul, attention, optimiser, compiled kernels, other) and the largest operators, in bench.md",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", action="store_true", help='print {"rows": [...], "device": ..., ...} instead of the table'
    )
    parser.add_argument(
        "--out", default="reports/bench", help="folder for bench.md and bench.json (bench_data.* with --data)"
    )
    add_data_arguments(parser)


def add_round_arguments(parser: argparse.ArgumentParser) -> None:
    """How many rounds: a precision target (the default) or a fixed number (--steps alone)."""
    parser.add_argument(
        "--steps",
        type=int,
        help="timed rounds: alone, exactly this many; with --precision-target, at least this many "
        "(default: at least 50 on CUDA, 5 on CPU, then until the precision target)",
    )
    parser.add_argument(
        "--precision-target",
        type=float,
        help=f"add rounds until every block's 95%% interval of its ratio to {BASELINE} has a half-width below this "
        f"(default {PRECISION_TARGET} unless --steps is given alone)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=MAX_MINUTES,
        help=f"time cap on the timed rounds with a precision target (default {MAX_MINUTES:g})",
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        action="store_true",
        help="instead: time the data path of --budget (shards -> masking -> device) against its training step",
    )
    parser.add_argument(
        "--budget",
        default="smoke",
        help="with --data: the budget whose data, arch and microbatch are used (default: smoke)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="with --data: budget overrides, e.g. train.microbatch=128"
    )


def run(args: argparse.Namespace) -> int:
    from ..bench import COMPILE_WARMUP, DEFAULTS, Rounds, render, step_bench
    from ..model import arch_config, load_block, parse_blocks
    from ..runtime import compile_default, pick_device, write_json

    device = pick_device(args.device)
    compile_model = compile_default(device) if args.compile is None else args.compile
    batch, steps, warmup = DEFAULTS[device.type if device.type in DEFAULTS else "cpu"]
    target = args.precision_target if args.precision_target is not None or args.steps is not None else PRECISION_TARGET
    steps = args.steps if args.steps is not None else steps
    warmup = args.warmup if args.warmup is not None else warmup
    if args.data:
        return run_data(args, device, compile_model, steps, warmup)
    if args.overrides:
        raise ConfigError(f"key=value overrides ({' '.join(args.overrides)}) only apply with --data")
    names = parse_blocks(args.blocks)  # unknown names fail here, listing the valid ones
    for name in names:
        load_block(name, arch_config(args.arch))  # a user's block: tried on a small input first
    batch = args.batch if args.batch is not None else batch
    warmup = max(warmup, COMPILE_WARMUP) if compile_model else warmup
    if batch < 1 or steps < 1 or warmup < 0:
        raise ConfigError("--batch and --steps must be positive, --warmup non-negative")
    if (target is not None and target <= 0) or args.max_minutes <= 0:
        raise ConfigError("--precision-target and --max-minutes must be positive")
    rounds = Rounds(warmup, steps, target, args.max_minutes * 60 if target is not None else None)

    if args.profile < 0:
        raise ConfigError("--profile takes a number of steps (at least 1)")
    result = step_bench(
        args.arch, names, batch, rounds, device, args.precision, compile_model, args.peer, args.seed, args.profile
    )
    out = Path(args.out)
    write_json(out / "bench.json", result)
    (out / "bench.md").write_text(render(result))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
        print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


def run_data(args: argparse.Namespace, device, compile_model: bool, steps: int, warmup: int) -> int:
    from ..bench.data import data_bench, render_data
    from ..runtime import write_json
    from ..train.config import PretrainConfig

    cfg = PretrainConfig.from_budget(args.budget, BASELINE, args.overrides)
    result = data_bench(cfg, device, args.precision, compile_model, steps, warmup)
    result["settings"]["overrides"] = list(args.overrides)
    out = Path(args.out)
    write_json(out / "bench_data.json", result)
    text = render_data(result)
    (out / "bench_data.md").write_text(text)
    print(json.dumps(result, indent=2) if args.json else text)
    return 0
