"""`cramming-simple export`: a run's model as a Hugging Face model folder with a model card.

The folder is what `save_model` writes (weights, config.json with `model_type` and `auto_map`, the generated
`modeling_cramming_simple.py`, the tokenizer), written again by this version, so a run saved before these keys
existed exports the same way; plus `README.md`, the model card: block, parameters, budget, hardware, steps,
losses, the GLUE results, the commands that made it and the two papers to cite.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from .. import __version__
from ..config import ConfigError, require, to_dict
from ..errors import CorruptFileError
from ..folders import load_model, save_model
from ..folders.io import CONFIG as MODEL_CONFIG
from ..folders.remote import modeling_source
from ..glue.score import column_scores, format_mean_std, load_results, run_summary
from ..glue.tasks import COLUMNS, TASK_LABELS, TASKS, load_tasks
from ..hardware import recorded_line
from ..markdown import table
from ..model import unwrap
from ..runs import GLUE, MODEL, SUMMARY, glue_model, kept_models
from ..runtime import FILE_MODE, read_json

CARD = "README.md"
LICENSE = "mit"  # the card's license unless `export --license` says otherwise (the harness's own)
# GLUE metric names as the hub's model-index spells them
HUB_METRICS = {"pearson": "pearsonr", "spearman": "spearmanr", "matthews": "matthews_correlation"}
CITATIONS = """@inproceedings{he2024simplifying,
  title     = {Simplifying Transformer Blocks},
  author    = {He, Bobby and Hofmann, Thomas},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024},
  url       = {https://arxiv.org/abs/2311.01906}
}

@inproceedings{geiping2023cramming,
  title     = {Cramming: Training a Language Model on a Single {GPU} in One Day},
  author    = {Geiping, Jonas and Goldstein, Tom},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2023},
  url       = {https://arxiv.org/abs/2212.14034}
}"""


def fine_tuned(run_dir: Path, task: str, seed: int | None) -> tuple[Path, int, list[dict]]:
    """(folder, seed, the task's ok results) of a kept fine-tuned model: the given seed, else the seed with the
    best score in the task's first GLUE column (the card says which, beside every seed's score)."""
    glue_dir = run_dir / GLUE / task
    kept = kept_models(glue_dir)
    if not kept:
        raise ConfigError(
            f"{run_dir} has no fine-tuned {task} model: run `cramming-simple glue {run_dir} --tasks {task} "
            "--save-models` first (pairs that have results run again to keep their models)"
        )
    results = [r for r in load_results(run_dir, unreadable=[]) if r["task"] == task and r.get("status") == "ok"]
    if seed is None:
        column = next(c.label for c in COLUMNS if c.task == task)
        scored = {r["seed"]: column_scores(r).get(column, float("-inf")) for r in results if r["seed"] in kept}
        seed = max(scored, key=scored.get) if scored else kept[0]
    require(seed in kept, f"no fine-tuned {task} model of seed {seed} in {glue_dir} (kept: {kept})")
    return glue_model(run_dir / GLUE, task, seed), seed, results


def export(
    run_dir: str | Path, out: str | Path, task: str | None = None, seed: int | None = None, license: str = LICENSE
) -> Path:
    """Write the Hugging Face folder of a run's pretrained model (or, with `task`, of a kept fine-tuned model)."""
    from ..data.tokenizer import load_tokenizer

    run_dir, out = Path(run_dir), Path(out)
    require((run_dir / MODEL / MODEL_CONFIG).is_file(), f"{run_dir} has no {MODEL}/: not a finished run folder")
    if task is not None:
        require(task in load_tasks().tasks, f"unknown GLUE task {task!r}")
        source, seed, results = fine_tuned(run_dir, task, seed)
    else:
        source, results = run_dir / MODEL, []
    if out.exists() and any(out.iterdir()) and not (out / MODEL_CONFIG).is_file():
        raise ConfigError(f"{out} exists and is not a model folder; give --out a new or empty folder")
    model = load_model(source)  # a user's block: the same source it was pretrained with, or one line
    spec = unwrap(model).encoder.spec
    modeling_source(spec, __version__)  # a block that cannot travel as remote code: one line, before writing
    config = read_json(source / MODEL_CONFIG)
    extra = {k: config[k] for k in ("task", "id2label", "label2id") if k in config}
    save_model(model, out, load_tokenizer(source), extra)
    model_card(run_dir, out, task=task, seed=seed, results=results, license=license).save(out / CARD)
    os.chmod(out / CARD, FILE_MODE)
    return out


def _summary(run_dir: Path) -> dict:
    try:
        return read_json(run_dir / SUMMARY)
    except (CorruptFileError, FileNotFoundError):
        return {}


def pretrain_command(run_dir: Path) -> str:
    """The command that makes this run's config with today's presets: its budget and block, and every value
    that differs from them as a key=value override."""
    from ..train.config import PretrainConfig, flatten

    run = PretrainConfig.from_run(run_dir)
    base = PretrainConfig.from_budget(run.budget, run.block)
    base.validate()
    ran, preset = flatten(to_dict(run)), flatten(to_dict(base))
    skip = {"name", "block", "block_source", "budget", "amendments", "data.cache_dir"}  # not the recipe
    overrides = [
        f"{k}={_value(v)}"
        for k, v in ran.items()
        if k.split(".")[0] not in skip and k not in skip and preset.get(k) != v
    ]
    words = ["cramming-simple", "pretrain", "--block", run.block, "--budget", run.budget]
    return shlex.join(words + (["--name", run.name] if run.name != base.name else []) + overrides)


def _value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def model_card(
    run_dir: Path, out: Path, task: str | None = None, seed: int | None = None, results=(), license: str = LICENSE
):
    """The model card: `huggingface_hub.ModelCard` with its metadata (license, tags, the model-index of the run's
    GLUE results, every per-seed result on disk through glue.score) and the facts, commands and citations."""
    from huggingface_hub import ModelCard, ModelCardData

    s = _summary(run_dir)
    config = read_json(out / MODEL_CONFIG)
    arch, title, block = config["arch"], config.get("block_title") or config["block"], config["block"]
    pipeline = "text-classification" if task else "fill-mask"
    glue = run_summary(run_dir, unreadable=[])
    facts = card_facts(s, arch, title, block)
    lines = [
        f"# {run_dir.name}: crammed BERT with the {title} block"
        + (f", fine-tuned on GLUE {TASK_LABELS.get(task, task)}" if task else ""),
        "",
        f"Pretrained with [cramming-simple](https://pypi.org/project/cramming-simple/) {__version__}, the harness "
        "that compares Transformer blocks (He & Hofmann, *Simplifying Transformer Blocks*) on the crammed-BERT "
        "recipe (Geiping & Goldstein, *Cramming*) under a fixed wall-clock budget.",
        "",
        table(["", ""], facts, left=[""]),
        "",
    ]
    if task:
        lines += _fine_tuned_section(task, seed, results, config)
    lines += _glue_section(glue)
    lines += _use_section(pipeline)
    lines += ["## How it was made", "", "```bash", _command_or_note(run_dir), *glue_commands(run_dir)]
    glue_flags = f" --glue {task} --seed {seed}" if task else ""
    lines += [
        f"cramming-simple export {shlex.quote(str(run_dir))}{glue_flags} --out {shlex.quote(out.name)}",
        "```",
        "",
    ]
    lines += ["## Citation", "", "```bibtex", CITATIONS, "```", ""]
    data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=pipeline,
        tags=["cramming-simple", "crammed-bert", block] + ([f"glue-{task}"] if task else []),
        model_name=run_dir.name,
        eval_results=eval_results(glue) or None,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def budget_fact(s: dict) -> str:
    """'24h: 24 h of wall-clock pretraining', or a reference budget's '24h: 24 h on RTX 3090 = H h ... on <GPU>'."""
    hours = s.get("budget_hours")
    if not hours:
        return "?"
    if isinstance(s.get("reference"), dict):
        return f"{s.get('budget', '?')}: {recorded_line(s['reference'], hours)} of pretraining"
    return f"{s.get('budget', '?')}: {hours} h of wall-clock pretraining"


def card_facts(s: dict, arch: dict, title: str, block: str) -> list[tuple[str, str]]:
    """The facts table of a model card, from the run's summary.json and the model's config."""
    return [
        ("Block", f"{title} (`{block}`)"),
        ("Parameters", _params(s)),
        (
            "Architecture",
            f"{arch['depth']} layers, width {arch['width']}, {arch['heads']} heads, GLU width "
            f"{arch['glu_width']}, vocabulary {arch['vocab_size']}, {arch['seq_len']} positions",
        ),
        ("Budget", budget_fact(s)),
        (
            "Hardware",
            f"{s.get('device', '?')} x{s.get('world_size', 1)}, {s.get('precision', '?')}, "
            f"{'compiled' if s.get('compiled') else 'eager'}, torch {s.get('torch', '?')}",
        ),
        ("Microbatch steps", _steps(s)),
        ("Final MLM loss (training)", _num(s.get("final_loss"))),
        (
            "Held-out MLM loss",
            f"{_num(s.get('eval_loss'))} on {s.get('eval_sequences', '?')} sequences"
            if s.get("eval_loss") is not None
            else "-",
        ),
        ("Pretraining data", _data(s)),
        ("Stopped by", f"{s.get('stop_reason', '?')}{'' if s.get('completed', True) else ' (not completed)'}"),
    ]


def eval_results(glue: dict) -> list:
    """The model-index entries of the run's GLUE columns: the mean over seeds, on the validation split."""
    from huggingface_hub import EvalResult

    out = []
    for c in COLUMNS:
        column = glue["columns"][c.label]
        if not column["n"]:
            continue
        out.append(
            EvalResult(
                task_type="text-classification",
                dataset_type="nyu-mll/glue",
                dataset_name=f"GLUE {c.label}",
                dataset_config=c.task,
                dataset_split=c.split,
                metric_type=HUB_METRICS.get(c.metric, c.metric),
                metric_value=round(column["mean"], 2),
                metric_name=f"{c.metric} x100, mean of {column['n']} fine-tuning seed(s)",
            )
        )
    return out


def glue_commands(run_dir: Path) -> list[str]:
    """The glue command lines that made the run's GLUE results (as each recorded its invocation), or, with no
    results yet, the one that would: the paper's protocol on the hub's data."""
    groups: dict[str, tuple[dict, set, set]] = {}
    for glue_dir in sorted([run_dir / GLUE, *run_dir.glob(f"{GLUE}@*")]):
        for r in load_results(run_dir, unreadable=[], glue=glue_dir.name):
            how = r.get("invocation") or {"protocol": r.get("protocol"), "data_dir": None, "overrides": []}
            _, tasks, seeds = groups.setdefault(json.dumps(how, sort_keys=True), (how, set(), set()))
            tasks.add(r["task"])
            seeds.add(r["seed"])
    if not groups:
        return [
            "# then GLUE (docs/recipe.md's protocol; --data-dir DIR for a local copy):",
            shlex.join(["cramming-simple", "glue", str(run_dir), "--protocol", "paper"]),
        ]
    lines = []
    for how, tasks, seeds in groups.values():
        words = ["cramming-simple", "glue", str(run_dir), "--protocol", str(how.get("protocol"))]
        words += ["--at", how["at"]] if how.get("at") else []
        words += ["--data-dir", how["data_dir"]] if how.get("data_dir") else []
        words += ["--tasks", ",".join(t for t in TASKS if t in tasks), "--seeds", ",".join(map(str, sorted(seeds)))]
        words += ["--save-models"] if how.get("save_models") else []
        lines.append(shlex.join(words + list(how.get("overrides") or [])))
    return lines


def _command_or_note(run_dir: Path) -> str:
    try:
        return pretrain_command(run_dir)
    except (ConfigError, OSError) as err:
        return f"# the pretraining command could not be rebuilt from {run_dir}/config.yaml: {err}"


def _params(s: dict) -> str:
    if "params" not in s:
        return "?"
    return f"{s['params']:,} ({s.get('non_embedding_params', 0):,} outside the embedding)"


def _steps(s: dict) -> str:
    if "microbatch_steps" not in s:
        return "?"
    return (
        f"{s['microbatch_steps']:,} of {s.get('microbatch', '?')} sequences "
        f"({s.get('optimizer_steps', 0):,} optimizer steps, {s.get('tokens', 0):,} tokens)"
    )


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _data(s: dict) -> str:
    d = s.get("data") or {}
    if not d:
        return "?"
    sequences = f"{d['sequences']:,} sequences, " if isinstance(d.get("sequences"), int) else ""
    return f"{d.get('name') or d.get('source') or '?'} ({sequences}data hash {d.get('hash', '?')})"


def _fine_tuned_section(task: str, seed: int, results: list[dict], config: dict) -> list[str]:
    label = TASK_LABELS.get(task, task)
    rows = []
    for r in sorted(results, key=lambda r: r["seed"]):
        scores = column_scores(r)
        rows.append(
            [
                f"{r['seed']}{' (this model)' if r['seed'] == seed else ''}",
                *(f"{scores[c.label]:.1f}" if c.label in scores else "-" for c in COLUMNS if c.task == task),
            ]
        )
    names = [f"{c.label} ({c.metric})" for c in COLUMNS if c.task == task]
    labels = config.get("id2label")
    out = [
        f"## Fine-tuned on {label}",
        "",
        f"Seed {seed} of the seeds below, on the validation split(s) (percent), from "
        f"`glue/{task}/seed{seed}.json` of the run."
        + (f" Labels: {', '.join(f'{k} = {v}' for k, v in labels.items())}." if labels else " One output: regression."),
        "",
    ]
    if rows:
        out += [table(["seed", *names], rows), ""]
    return out


def _glue_section(summary: dict) -> list[str]:
    columns = [c.label for c in COLUMNS if summary["columns"][c.label]["n"]]
    if not columns:
        return []
    average = summary.get("glue_average")
    cells = [format_mean_std(summary["columns"][c], sep="±") for c in columns]
    head = [*columns, "GLUE"]
    cells.append(format_mean_std(average, sep="±") if average else f"- ({summary.get('average_missing_reason')})")
    protocol = summary.get("protocol")
    protocol = " + ".join(map(str, protocol)) if isinstance(protocol, list) else protocol
    return [
        "## GLUE (this pretrained model)",
        "",
        f"Validation scores in percent, mean ± std over seeds {summary.get('seeds')}, protocol `{protocol}` "
        f"(profile {summary.get('profile')}), from every `glue/<task>/seed<k>.json` of the run.",
        "",
        table(head, [cells]),
        "",
    ]


def _use_section(pipeline: str) -> list[str]:
    auto = "AutoModelForSequenceClassification" if pipeline == "text-classification" else "AutoModelForMaskedLM"
    example = "'The capital of France is [MASK].'" if pipeline == "fill-mask" else "'A fine movie.'"
    return [
        "## Use",
        "",
        "The modeling code is in this folder (`modeling_cramming_simple.py`, generated from the harness's model "
        "package): it needs `torch` and `transformers`, not cramming-simple. Where cramming-simple is installed, "
        "`trust_remote_code` is not needed.",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {auto}, pipeline",
        "",
        'folder = "."  # or the hub repo id',
        "tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # it reads config.json too",
        f"model = {auto}.from_pretrained(folder, trust_remote_code=True)",
        f'print(pipeline("{pipeline}", model=model, tokenizer=tokenizer)({example}))',
        "```",
        "",
    ]
