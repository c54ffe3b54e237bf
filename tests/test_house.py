"""The house kept in shape: components that own their state and timing, one training step everywhere, and facts
with one home."""

from __future__ import annotations

import ast
import math
import sys
import time
from pathlib import Path

import pytest
import torch

import cramming_simple
from cramming_simple.config import ConfigError
from cramming_simple.train.clock import BudgetClock
from cramming_simple.train.config import PretrainConfig

PACKAGE = Path(cramming_simple.__file__).parent


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def attribute_writes(path: Path) -> list[tuple[str, int, str]]:
    """(function, line, target) for every assignment to an attribute of `state`/`st` or of a config (`cfg.x.y`)."""
    writes = []
    for func in ast.walk(ast.parse(path.read_text())):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in (t for t in targets if isinstance(t, ast.Attribute)):
                for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                    root = element
                    while isinstance(root, ast.Attribute):
                        root = root.value
                    if isinstance(root, ast.Name) and root.id in ("state", "st", "cfg", "config"):
                        writes.append((func.name, node.lineno, ast.unparse(element)))
    return writes


def test_each_training_component_writes_only_its_own_state():
    """The trainer records what its components return (the evaluator's loss, the projection's steps, the data's
    pad id for the arch); only the clock's `stamp` writes the state's timers. The config is written only by its
    own constructors (config.py); everything else makes a new one (`dataclasses.replace`)."""
    others = {}
    for path in sorted((PACKAGE / "train").glob("*.py")):
        for func, line, target in attribute_writes(path):
            config = target.startswith(("cfg.", "config."))
            allowed = {"loop.py": not config, "state.py": not config, "config.py": config}.get(path.name, False)
            stamp = path.name == "clock.py" and func == "stamp" and not config
            if not (allowed or stamp):
                others[f"{path.name}:{line} {func}"] = target
    assert others == {}


def test_no_parameter_shadows_a_builtin():
    import builtins

    shadowing = []
    for path in package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = node.args
                for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                    if a.arg in ("compile", "input", "type", "id", "sum", "max", "min", "len", "list", "dict"):
                        shadowing.append(f"{path.relative_to(PACKAGE)}:{getattr(node, 'name', 'lambda')}({a.arg})")
    assert hasattr(builtins, "compile") and not shadowing, shadowing


# ----------------------------------------------------------------------------------------------- one step


def test_every_trainer_uses_the_one_train_step():
    """The trainer, the bench, check-block and GLUE fine-tuning all build train.step.TrainStep; nobody else calls
    backward or an optimiser step."""
    users = {
        p.relative_to(PACKAGE).as_posix()
        for p in package_files()
        if "TrainStep(" in p.read_text() and p.relative_to(PACKAGE).as_posix() != "train/step.py"
    }
    assert {"train/loop.py", "bench/step.py", "check/card.py", "glue/finetune.py"} <= users
    own_steps = []
    for path in package_files():
        if path.relative_to(PACKAGE).as_posix() == "train/step.py":
            continue
        text = path.read_text()
        for needle in (".backward()", "scaler.step(", "clip_grad_norm_("):
            if needle in text:
                own_steps.append(f"{path.relative_to(PACKAGE)}: {needle}")
    allowed = {"check/card.py: .backward()"}  # the gradient checks (one backward, no update) are not training
    assert set(own_steps) <= allowed, own_steps


def test_the_bench_times_the_trainers_step_with_clipping(monkeypatch):
    from cramming_simple.bench import Contender, block_contender, make_batch
    from cramming_simple.model import arch_config
    from cramming_simple.train.config import TrainConfig

    cfg = arch_config("tiny", vocab_size=512)
    data = make_batch(cfg, 2, torch.device("cpu"), seed=0)
    c: Contender = block_contender("sas", cfg, data, torch.device("cpu"))
    c.prepare(None, torch.device("cpu"), False)
    clipped = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, m: clipped.append(m) or real(p, m))
    before = [p.detach().clone() for p in c.eager.parameters()]
    c.step()
    assert clipped == [TrainConfig().grad_clip]  # the recipe's clipping, as pretraining does it
    assert any(not torch.equal(a, b) for a, b in zip(before, c.eager.parameters()))  # and the update ran
    assert all(p.grad is None for p in c.eager.parameters())  # zero_grad(set_to_none) as the trainer


def test_train_step_accumulates_like_one_big_batch():
    from cramming_simple.train.step import TrainStep

    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def run(chunks: int) -> torch.Tensor:
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 1)
        step = TrainStep(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.device("cpu"),
            None,
            grad_clip=1e9,
            loss_fn=lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]),
        )
        for xb, yb in zip(x.chunk(chunks), y.chunk(chunks)):
            step.backward((xb, yb), 1.0 / chunks)
        norm = step.update()
        assert norm is not None and math.isfinite(float(norm))
        return model.weight.detach()

    assert torch.allclose(run(1), run(4), atol=1e-6)


# ----------------------------------------------------------------------------------------------- the budget clock


def clock_config(budget_s: float, *overrides: str) -> PretrainConfig:
    """A run's typed config with a budget of `budget_s` seconds, logging every 5 s, checkpointing every 30 s."""
    hours = f"hours={budget_s / 3600!r}"
    return PretrainConfig.from_budget(
        "smoke", "preln", [hours, "impl.log_seconds=5", "impl.checkpoint_minutes=0.5", *overrides]
    )


def test_the_budget_clock_owns_its_points_and_pauses():
    cfg = clock_config(100.0, "impl.eval_minutes=0.4166666666666667", "impl.keep_at=[0.05,0.5]")
    assert (cfg.budget_s, cfg.eval_every_s) == (100.0, 25.0)
    clock = BudgetClock(cfg, spent=10.0)
    assert clock.keep == [0.5]  # 5 % of the budget was behind a resumed run already
    assert clock.next_log == 15.0 and clock.next_checkpoint == 40.0 and clock.next_eval == 25.0
    clock.agree(26.0)
    assert clock.p == 0.26 and clock.log_due() and clock.eval_due() and not clock.checkpoint_due()
    clock.logged()
    clock.evaluated()
    assert clock.next_log == 31.0 and clock.next_eval == 50.0  # the fixed eval grid, not 26 + 25
    assert clock.snapshot_due() is None
    clock.agree(50.0)
    assert clock.snapshot_due() == 0.5 and clock.snapshot_due() is None and clock.keep == []
    assert clock.spent_with(50.0) and not clock.spent_with(49.0)
    clock.start()
    with clock.paused():
        time.sleep(0.05)
        inside = clock.elapsed()
    time.sleep(0.02)
    assert inside - 10.0 < 0.04 and clock.elapsed() - 10.0 >= 0.02  # paused time is not budget time
    assert BudgetClock(clock_config(100.0, "impl.eval_minutes=0")).next_eval == math.inf  # only at start and end


def test_the_step_time_is_an_ema_of_the_ticks():
    clock = BudgetClock(clock_config(100.0))
    clock.start()
    assert clock.tick(0.0) == 0.0  # the first tick has nothing to measure
    time.sleep(0.02)
    first = clock.tick(0.0)
    assert first >= 0.02
    time.sleep(0.02)
    assert 0.9 + 0.1 * 0.02 <= clock.tick(1.0) < 0.95  # 0.9 x the old estimate + 0.1 x the new interval


# ----------------------------------------------------------------------------------------------- model / folders


def test_the_model_package_holds_the_model_and_the_folder_machinery_lives_beside_it():
    from helpers.imports import imports

    model_files = sorted((PACKAGE / "model").glob("*.py"))
    assert {p.name for p in model_files} >= {"config.py", "layers.py", "blocks.py", "bert.py"}
    assert not {p.name for p in model_files} & {"io.py", "remote.py"}
    for path in model_files:  # the model never reaches up into how it travels
        assert not {n for n in imports(path) if n.startswith("cramming_simple.folders")}, path.name


def test_what_the_generated_modeling_file_needs_is_declared_and_defined(monkeypatch):
    from cramming_simple.folders import remote
    from cramming_simple.model import block_spec

    assert remote.outside_imports() == remote.NEEDS  # the interface, read off the sources
    assert set().union(*remote.NEEDS.values()) <= remote._defined(remote._glue_code())  # and the file defines it
    monkeypatch.setattr(
        remote, "outside_imports", lambda: {**remote.NEEDS, "cramming_simple.runtime": {"autocast"}}
    )  # a model source that started to import from the runtime: refused at save time
    with pytest.raises(ConfigError, match="cramming_simple.runtime"):
        remote.modeling_source(block_spec("sas"), "test")


# ----------------------------------------------------------------------------------------------- no global state

MUTATORS = {"append", "add", "update", "setdefault", "pop", "clear", "remove", "insert", "extend", "discard", "popitem"}


def module_level_mutations(tree: ast.Module) -> list[str]:
    """Module-level containers that a function changes, and `global` statements: state that outlives a call."""
    containers = set()
    for node in tree.body:
        value = getattr(node, "value", None)
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)) or (
            isinstance(value, ast.Call) and getattr(value.func, "id", None) in ("dict", "list", "set")
        )
        if mutable:
            containers |= {t.id for t in targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found += [f"global {name}" for name in node.names]
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            for target in getattr(node, "targets", None) or [node.target]:
                if isinstance(target, ast.Subscript) and getattr(target.value, "id", None) in containers:
                    found.append(f"{target.value.id}[...] changed")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            owner = node.func.value
            if getattr(owner, "id", None) in containers:
                found.append(f"{owner.id}.{node.func.attr}()")
            if ast.unparse(owner) == "sys.path":
                found.append(f"{ast.unparse(owner)}.{node.func.attr}()")
    return found


def test_no_module_level_mutable_state():
    """The block registry is an object (its loads and checks), the GLUE worker's state lives in the worker, and
    nothing changes sys.path for the whole process."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        problems = module_level_mutations(ast.parse(path.read_text()))
        if problems:
            found[str(path.relative_to(PACKAGE))] = problems
    assert found == {}


def test_the_state_walker_sees_a_cache_a_global_and_sys_path():
    source = "import sys\n_CACHE = {}\n_W = None\n"
    source += "def f(k, v):\n    global _W\n    _CACHE[k] = v\n    sys.path.insert(0, k)\n"
    assert module_level_mutations(ast.parse(source)) == ["global _W", "_CACHE[...] changed", "sys.path.insert()"]


def test_a_user_block_is_imported_on_its_own_into_a_registry_object(tmp_path):
    """Its folder is never on sys.path (not even while it imports), and two registries share nothing."""
    from cramming_simple.model.registry import BlockRegistry

    folder = tmp_path / "blocks"
    folder.mkdir()
    (folder / "mine.py").write_text(
        "import sys\nfrom torch import nn\nSEEN = list(sys.path)\n\n"
        "class Mine(nn.Module):\n    def __init__(self, cfg, layer):\n        super().__init__()\n\n"
        "    def forward(self, x, mask):\n        return x\n"
    )
    before = list(sys.path)
    one, two = BlockRegistry(), BlockRegistry()
    spec = one.spec(f"{folder / 'mine.py'}:Mine")
    assert str(folder) not in sys.modules[spec.build.__module__].SEEN and sys.path == before
    assert list(one.loaded) == [spec.ref] and two.loaded == {}
    assert one.spec(spec.ref) is spec  # loaded once per registry
