"""The report card of one block (built-in or a user's), measured in minutes on a CPU, before any GPU time.

Each line is pass / warn / fail with its measured value:
  shapes (fp32, bf16)   every layer maps (B, T, d) -> (B, T, d) in a floating dtype, under fp32 and bf16 autocast;
  padding               changing the tokens at padded positions leaves every valid position's output unchanged;
  finite (fp32, bf16)   no NaN / inf in the MLM loss or any gradient;
  gradients             every parameter gets a gradient (fail: unused); after one update none is exactly zero (warn);
  parameters            the count and its difference to Pre-LN's (information: always pass);
  rank collapse         at init, on real text: the mean cosine similarity between the token representations of a
                        sequence after the last layer (warn: above `collapse_cos` and `collapse_rise` above the
                        embedding's: the tokens are becoming one);
  norm growth           at init: the largest residual-stream norm over the embedding's (warn: above `norm_growth`);
  trainability          N steps of the smoke recipe (its optimiser settings, the block's peak LR and weight decay,
                        the budget triangle over N steps) on the smoke budget's text; the loss of the last tenth of
                        the steps against Pre-LN's on the same batches (warn: more than `loss_margin` above; fail:
                        not finite or not below the first step's), and both at equal wall-clock time;
  speed                 tokens/s over Pre-LN's in an interleaved bench (bench.step_bench), with both rows' spread
                        (warn: below `speed_ratio` by more than that spread);
  torch.compile         the MLM model traces to one graph without breaks (warn: the breaks and their reasons).
Plus the signal-propagation figure: cosine similarity and norm against depth, the block beside Pre-LN and SAS.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..data import MicrobatchStream, MLMCollator, PackedData, Split, load_tokenizer
from ..model import MaskedLM, block_spec, count_params
from ..model.config import ArchConfig
from ..model.diagnostics import measure
from ..optim import make_optimizer
from ..reference import BASELINE
from ..runtime import autocast, autocast_dtype, environment, now_iso, precision_name, seed_everything
from ..train.config import PretrainConfig, block_recipe
from ..train.schedules import lr_at
from ..train.step import TrainStep

CHECKS = ("signal", "train", "speed", "compile")  # the groups --skip may leave out; the basics always run
COMPARED_IN_FIGURE = ("preln", "sas")


@dataclass(frozen=True)
class Limits:
    """Where a measured value turns a line into warn or fail (docs/your-block.md explains each)."""

    collapse_cos: float = 0.9  # warn: last layer's token cosine similarity above this ...
    collapse_rise: float = 0.1  # ... and at least this much above the embedding's
    norm_growth: float = 8.0  # warn: the residual-stream norm at some layer over the embedding's
    padding_tol: float = 1e-4  # fail: valid positions move by more than this, relative to their largest value
    loss_margin: float = 0.05  # warn: trained loss more than 5 % above Pre-LN's
    speed_ratio: float = 0.9  # warn: tokens/s below 0.9 x Pre-LN's


LIMITS = Limits()


@dataclass
class Card:
    lines: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def add(self, check: str, status: str, value: str, note: str = "") -> None:
        self.lines.append({"check": check, "status": status, "value": value, "note": note})

    @property
    def verdict(self) -> str:
        """fail if any line fails, else warn if any warns, else pass."""
        statuses = [line["status"] for line in self.lines]
        return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"


@dataclass
class Text:
    """Real text from the smoke budget's prepared corpus: unmasked rows and an MLM microbatch stream."""

    rows: Tensor  # (B, T) token ids
    pad_id: int
    stream: Callable[[int], dict[str, Tensor]]  # microbatch index -> {input_ids, positions, labels}


def load_text(smoke: PretrainConfig, prepared_path: Path, batch: int, seed: int) -> Text:
    data = PackedData(prepared_path)
    tokenizer = load_tokenizer(prepared_path / "tokenizer")
    t = smoke.train
    collate = MLMCollator.for_tokenizer(tokenizer, smoke.arch.seq_len, t.mask_prob, seed, t.masking)
    split = Split.of(data, smoke.data.holdout)
    rows = torch.from_numpy(data.rows(split.heldout_rows()[:batch] if split.held >= batch else np.arange(batch)))
    stream = MicrobatchStream(data, collate, batch, seed, split=split)
    return Text(rows.long(), int(tokenizer.pad_token_id), stream)


def check_block(
    ref: str,
    cfg: ArchConfig,
    smoke: PretrainConfig,
    text: Text,
    device: torch.device,
    precision: str = "auto",
    steps: int = 60,
    speed_steps: int = 5,
    skip: tuple[str, ...] = (),
    seed: int = 0,
    limits: Limits = LIMITS,
    compile_speed: bool = False,
) -> dict:
    """Every check of the card for block `ref` at arch `cfg`; the result as check.json holds it."""
    spec = block_spec(ref)
    card = Card()
    dtype = autocast_dtype(device, precision)
    started = time.perf_counter()

    def build(block: str = ref, train: bool = True) -> MaskedLM:
        seed_everything(seed)
        return MaskedLM(cfg, block).to(device).train(train)

    ids = text.rows.to(device)
    padded_ids, attention_mask = pad_half(ids, text.pad_id)
    shapes(card, build, padded_ids, attention_mask, device)
    padding(card, build, padded_ids, attention_mask, limits)
    batch = {k: v.to(device) for k, v in text.stream(0).items()}
    finite(card, build, batch, device)
    gradients(card, build, batch, ref, device)
    parameters(card, cfg, ref)
    if "signal" not in skip:
        signal(card, cfg, ref, ids, device, seed, limits)
    if "train" not in skip:
        trainability(card, build, smoke, ref, text, steps, device, dtype, limits)
    if "speed" not in skip:
        speed(card, cfg, ref, len(text.rows), speed_steps, device, precision, compile_speed, seed, limits)
    if "compile" not in skip:
        compiles(card, cfg, ref, batch, attention_mask)
    return {
        "block": ref,
        "title": spec.title,
        "source": spec.source,
        "verdict": card.verdict,
        "lines": card.lines,
        "skipped": [c for c in CHECKS if c in skip],
        "arch": asdict(cfg),
        "settings": {"batch": len(text.rows), "steps": steps, "speed_steps": speed_steps}
        | {"precision": precision_name(dtype), "seed": seed, "data": smoke.data.describe()},
        "limits": asdict(limits),
        **card.data,
        "seconds": round(time.perf_counter() - started, 1),
        "device": environment(device)["device"],
        "environment": environment(device),
        "date": now_iso(),
    }


def pad_half(ids: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """(B, T) ids -> the same with the second half of every other row padded, and the (B, T) attention mask."""
    attention_mask = torch.ones_like(ids)
    attention_mask[1::2, ids.shape[1] // 2 :] = 0
    return ids.masked_fill(attention_mask == 0, pad_id), attention_mask


def per_layer_outputs(model: MaskedLM, run: Callable[[], object]) -> list[Tensor]:
    outs: list[Tensor] = []
    handles = [layer.register_forward_hook(lambda m, a, out: outs.append(out)) for layer in model.encoder.layers]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return outs


def shapes(card: Card, build, ids: Tensor, attention_mask: Tensor, device: torch.device) -> None:
    model = build(train=False)
    want = (*ids.shape, model.encoder.cfg.width)
    for label, run_dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with torch.no_grad(), autocast(device, run_dtype):
            outs = per_layer_outputs(model, lambda: model.encoder(ids, attention_mask))
        wrong = [i for i, o in enumerate(outs) if not isinstance(o, Tensor) or tuple(o.shape) != want]
        kinds = sorted({str(o.dtype).removeprefix("torch.") for o in outs if isinstance(o, Tensor)})
        bad_dtype = [k for k in kinds if k not in ("float32", "bfloat16")]
        status = "fail" if wrong or bad_dtype else "pass"
        value = f"{len(outs)} layers -> {want} {'/'.join(kinds)}"
        note = f"layers {wrong} have another shape" if wrong else f"unexpected dtype {bad_dtype}" if bad_dtype else ""
        card.add(f"shapes ({label})", status, value, note)


def padding(card: Card, build, ids: Tensor, attention_mask: Tensor, limits: Limits) -> None:
    model = build(train=False)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randint(5, int(ids.max()) + 1, ids.shape, generator=generator).to(ids.device)
    changed = torch.where(attention_mask == 0, noise, ids)
    with torch.no_grad():
        a, b = model.encoder(ids, attention_mask), model.encoder(changed, attention_mask)
    valid = attention_mask.bool()
    moved = float((a - b)[valid].abs().max() / a[valid].abs().max().clamp_min(1e-12))
    status = "pass" if moved <= limits.padding_tol else "fail"
    card.add(
        "padding invariance",
        status,
        f"{moved:.1e} relative change at valid positions",
        "" if status == "pass" else "padded tokens leak into real ones: the block ignores the KeyMask somewhere",
    )


def finite(card: Card, build, batch: dict, device: torch.device) -> None:
    for label, run_dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model = build()
        with autocast(device, run_dtype):
            loss = model(**batch)
        loss.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        ok = bool(torch.isfinite(loss)) and not bad
        note = "" if ok else f"non-finite loss or gradients: {', '.join(bad[:4]) or 'loss'}"
        card.add(f"finite ({label})", "pass" if ok else "fail", f"MLM loss {loss.item():.3f}", note)


def gradients(card: Card, build, batch: dict, ref: str, device: torch.device) -> None:
    model = build()
    recipe = block_recipe(ref)
    optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay, device=device)
    model(**batch).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model(**batch).backward()  # after one update: a zero-initialised gain no longer blocks its branch
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    total = sum(1 for _ in model.parameters())
    if unused:
        card.add("gradients", "fail", f"{len(unused)} of {total} tensors get none", f"unused: {', '.join(unused[:4])}")
    elif zero:
        card.add("gradients", "warn", f"{len(zero)} of {total} exactly zero after one step", ", ".join(zero[:4]))
    else:
        card.add("gradients", "pass", f"all {total} tensors")


def parameters(card: Card, cfg: ArchConfig, ref: str) -> None:
    with torch.device("meta"):
        mine, base = count_params(MaskedLM(cfg, ref)), count_params(MaskedLM(cfg, BASELINE))
    diff = mine["params"] - base["params"]
    card.data["params"] = {"block": mine, BASELINE: base}
    card.add(
        "parameters",
        "pass",
        f"{mine['params'] / 1e6:.2f}M ({diff:+,} = {100 * diff / base['params']:+.2f}% vs Pre-LN)",
        f"non-embedding {mine['non_embedding'] / 1e6:.2f}M",
    )


def signal(card: Card, cfg: ArchConfig, ref: str, ids: Tensor, device: torch.device, seed: int, limits) -> None:
    """Cosine similarity and norm through depth at init on real text: the block, Pre-LN and SAS on the same rows."""
    profiles = {}
    for block in dict.fromkeys([ref, *COMPARED_IN_FIGURE]):
        seed_everything(seed)
        measured = measure(MaskedLM(cfg, block).to(device), ids)
        stream = [measured["embedding"], *measured["layers"]]
        profiles[block] = {
            "title": block_spec(block).title,
            "cos": [s["cos"] for s in stream],
            "norm": [s["norm"] for s in stream],
        }
    card.data["signal"] = profiles
    cos, norm = profiles[ref]["cos"], profiles[ref]["norm"]
    collapse = cos[-1] > limits.collapse_cos and cos[-1] - cos[0] >= limits.collapse_rise
    card.add(
        "rank collapse (init)",
        "warn" if collapse else "pass",
        f"token cosine {cos[0]:.2f} (embedding) -> {cos[-1]:.2f} (layer {len(cos) - 1})",
        "token representations become alike with depth: rank collapse" if collapse else "",
    )
    growth = max(norm) / norm[0]
    card.add(
        "norm growth (init)",
        "warn" if growth > limits.norm_growth else "pass",
        f"{growth:.2f}x the embedding's norm at most (layer {int(np.argmax(norm))})",
        f"grows by more than {limits.norm_growth:g}x" if growth > limits.norm_growth else "",
    )


def trainability(card: Card, build, smoke, ref: str, text: Text, steps: int, device, dtype, limits) -> None:
    """`steps` steps of the smoke recipe for the block and for Pre-LN, on the same microbatches."""
    t = smoke.train
    batches = [text.stream(b) for b in range(steps)]
    curves = {}
    for block in dict.fromkeys([ref, BASELINE]):
        recipe = block_recipe(block)
        model = build(block)
        optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay, tuple(t.betas), t.eps, device, t.decay_rule)
        train_step = TrainStep(model, optimizer, device, dtype, t.grad_clip)  # the trainer's step
        losses, clock = [], []
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(i / steps, recipe.lr)  # the budget triangle, over steps instead of time
            loss, _ = train_step.step({k: v.to(device) for k, v in batch.items()})
            losses.append(loss.item())
            clock.append(time.perf_counter() - start)
        curves[block] = {"loss": losses, "seconds": clock, "lr": recipe.lr, "weight_decay": recipe.weight_decay}
    card.data["train"] = curves
    tail = max(1, steps // 10)
    mine, base = (statistics.fmean(curves[b]["loss"][-tail:]) for b in (ref, BASELINE))
    # at equal wall-clock time: each run's loss over its last `tail` steps before the shorter run's end
    end = min(curves[ref]["seconds"][-1], curves[BASELINE]["seconds"][-1])
    at_time = {b: statistics.fmean(tail_before(curves[b], end, tail)) for b in (ref, BASELINE)}
    value = (
        f"loss {mine:.3f} vs Pre-LN {base:.3f} after {steps} steps; {at_time[ref]:.3f} vs {at_time[BASELINE]:.3f} "
        f"at {end:.0f} s"
    )
    if not np.isfinite(curves[ref]["loss"]).all():
        card.add("trainability", "fail", value, "the loss became NaN or inf")
    elif mine >= curves[ref]["loss"][0]:
        card.add("trainability", "fail", value, "the loss did not fall")
    elif mine > base * (1 + limits.loss_margin):
        card.add("trainability", "warn", value, f"more than {100 * limits.loss_margin:g}% above Pre-LN's")
    else:
        card.add("trainability", "pass", value)


def tail_before(curve: dict, end: float, tail: int) -> list[float]:
    n = max(1, sum(s <= end + 1e-9 for s in curve["seconds"]))
    return curve["loss"][max(0, n - tail) : n]


def speed(card: Card, cfg, ref: str, batch: int, steps: int, device, precision, compile_model, seed, limits) -> None:
    from ..bench import Rounds, step_bench  # the bench machinery itself: same step, same interleaving

    result = step_bench(cfg, [ref], batch, Rounds(warmup=2, steps=steps), device, precision, compile_model, None, seed)
    base, mine = result["rows"][0], result["rows"][-1]
    card.data["speed"] = {k: result[k] for k in ("rows", "settings", "device")}
    ratio = mine["ratio_vs_preln"]
    spread = max(mine["step_s_iqr_pct"], base["step_s_iqr_pct"]) / 100
    slower = ratio < limits.speed_ratio and ref != BASELINE
    noisy = slower and spread >= 1 - ratio  # the gap is within the machine's noise: no evidence either way
    card.add(
        "speed",
        "warn" if slower and not noisy else "pass",
        f"{ratio:.2f}x Pre-LN's tokens/s (spread {mine['step_s_iqr_pct']:.0f}% / {base['step_s_iqr_pct']:.0f}%)",
        f"{mine['steps_per_s']:.3g} steps/s, batch {batch}, {steps} interleaved steps, "
        f"{'compiled' if compile_model else 'eager'}"
        + ("; below the limit but within the spread: time more steps (--speed-steps)" if noisy else ""),
    )


def compiles(card: Card, cfg: ArchConfig, ref: str, batch: dict, attention_mask: Tensor) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    model = MaskedLM(cfg, ref)
    try:
        explained = torch._dynamo.explain(model)(
            batch["input_ids"].cpu(), batch["positions"].cpu(), batch["labels"].cpu(), attention_mask.cpu()
        )
    except Exception as err:  # noqa: BLE001 - the card reports it; pretraining falls back to eager
        card.add("torch.compile", "warn", "does not trace", f"{type(err).__name__}: {str(err).splitlines()[0]}")
        return
    reasons = [str(getattr(b, "reason", b)).splitlines()[0] for b in explained.break_reasons]
    one = explained.graph_count == 1 and explained.graph_break_count == 0
    card.add(
        "torch.compile",
        "pass" if one else "warn",
        f"{explained.graph_count} graph(s), {explained.graph_break_count} break(s)",
        "; ".join(dict.fromkeys(reasons))[:300],
    )


def render(result: dict) -> str:
    from ..markdown import table as markdown_table

    s = result["settings"]
    rows = [[line["check"], line["status"].upper(), line["value"], line["note"]] for line in result["lines"]]
    lines = [
        f"# check-block: {result['title']} — {result['verdict'].upper()}",
        "",
        f"- block: `{result['block']}`"
        + (f" (sha256 {result['source']['sha256'][:12]})" if result["source"].get("sha256") else ""),
        f"- arch: {result['arch']['preset']} (width {result['arch']['width']}, depth {result['arch']['depth']}, "
        f"heads {result['arch']['heads']}); batch {s['batch']}; precision {s['precision']}; seed {s['seed']}",
        f"- device: {result['device']}; {result['date']}; {result['seconds']} s",
        "",
        markdown_table(["check", "status", "measured", "note"], rows, left=["check", "status", "measured", "note"]),
    ]
    if result["skipped"]:
        lines.append(f"- skipped: {', '.join(result['skipped'])}")
    if "signal" in result:
        lines.append("- signal propagation at init: `signal.png` / `signal.pdf` (cosine similarity and norm by depth)")
    lines.append(f"- limits: {', '.join(f'{k} {v:g}' for k, v in result['limits'].items())} (docs/your-block.md)")
    return "\n".join(lines) + "\n"
