"""No import circle anywhere in aster/: every `import` / `from ... import` of an aster module,
at module level or inside a function, is an edge; the graph must be acyclic (a circle is what
made train/common.py, ds_engine.py and parallel.py hard to change, and what kept config.py,
eval.py, the rollout engines and tiny_model.py importing each other inside functions)."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
# where each part of the installed package lives (pyproject's package-dir)
SOURCES_OF = {"aster": "aster", "aster.backends": "backends", "aster.kernels": "kernels"}


def _module_name(path: Path, top: Path, package: str) -> str:
    parts = (package, *path.relative_to(top).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The aster modules `path` imports (`from pkg import mod` counts as pkg.mod when
    that is a module, else as pkg)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p, ROOT / top, package): p for package, top in SOURCES_OF.items()
             for p in (ROOT / top).rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, name, modules) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_aster_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 100 and {"aster.config", "aster.train.strategy", "aster.rollout.engine",
                                 "aster.sandbox.pool", "aster.backends.cpu.backend",
                                 "aster.kernels.chunked"} <= set(graph)
    assert "aster.rollout.engine" in graph["aster.rollout.hf_stream"]  # the edges are seen
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# ---- the structure issue 23 asks for: one file per strategy kind, the stage built once ----
SOURCES = [p for top in ("aster", "bench", "scripts", "tests") for p in (ROOT / top).rglob("*.py")]
STRATEGY_DIR = ROOT / "aster" / "train" / "strategy"
# what only one kind's file may name: its library's wrapper (a second home is what spread
# DeepSpeed and FSDP2 over eight files each)
KIND_NAMES = {"deepspeed": {"deepspeed"},
              "fsdp2": {"fully_shard", "MixedPrecisionPolicy", "CPUOffloadPolicy"},
              "ddp": {"DistributedDataParallel"}}


def _names(tree: ast.AST) -> set[str]:
    """Every name a module uses or imports (dotted imports by each part)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            out |= {part for a in node.names for part in a.name.split(".")}
            out |= set((getattr(node, "module", None) or "").split("."))
    return out


def test_each_strategy_kind_lives_in_its_own_file():
    """The registry names aster/train/strategy/<kind>.py for each built-in kind."""
    from aster.train.strategy import _REGISTRY, Strategy, strategy_class

    for kind in ("none", "ddp", "fsdp2", "deepspeed"):
        module, _ = _REGISTRY[kind].split(":")
        assert module == f"aster.train.strategy.{kind}", (kind, module)
        cls = strategy_class(kind) if kind != "deepspeed" else None
        assert cls is None or (issubclass(cls, Strategy) and cls.__module__ == module)


def test_no_strategy_code_outside_its_kinds_file():
    """A Strategy subclass only in aster/train/strategy/ (one a file), and a kind's library
    wrapper (deepspeed, fully_shard, DistributedDataParallel) named only in its own file."""
    for path in (ROOT / "aster").rglob("*.py"):
        tree = ast.parse(path.read_text())
        subclasses = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                      and any(getattr(b, "id", None) == "Strategy" for b in n.bases)]
        if path.parent == STRATEGY_DIR:
            assert len(subclasses) <= 1, (path, subclasses)
        else:
            assert not subclasses, f"{path}: a Strategy outside aster/train/strategy/"
        names = _names(tree)
        for kind, own in KIND_NAMES.items():
            if path != STRATEGY_DIR / f"{kind}.py":
                assert not names & own, f"{path.relative_to(ROOT)} names {names & own}: " \
                    f"{kind}'s code belongs in aster/train/strategy/{kind}.py"


def _stage_fields() -> set[str]:
    from dataclasses import fields

    from aster.train.stage import TrainStage

    return {f.name for f in fields(TrainStage)}


def test_the_stage_is_built_once_and_frozen(tmp_path):
    """TrainContext and TrainStage are frozen: nothing can be attached after construction."""
    from dataclasses import FrozenInstanceError, is_dataclass

    import pytest

    from aster.train.common import TrainContext
    from aster.train.stage import TrainStage

    assert is_dataclass(TrainContext) and TrainContext.__dataclass_params__.frozen
    assert issubclass(TrainStage, TrainContext) and TrainStage.__dataclass_params__.frozen
    ctx = TrainContext(cfg=None, backend=None, strategy=None, policy=None, hf_model=None,
                       tokenizer=None, run_dir=tmp_path)
    for name in ("updater", "objective", "policy", "pool"):
        with pytest.raises(FrozenInstanceError):
            setattr(ctx, name, object())
    assert {"updater", "optimizer", "scheduler", "objective", "penalties",
            "ref_policy", "start", "last_good", "pool", "model_dir"} <= _stage_fields()


CONTEXT_NAMES = {"ctx", "stage", "context"}  # what the trainers call a context or a stage


def _assigned_attributes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, `name.attr`) of every assignment to an attribute of a context-named variable,
    and every setattr / object.__setattr__ / delattr on one."""
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name) \
                and node.args[0].id in CONTEXT_NAMES \
                and ast.unparse(node.func) in ("setattr", "delattr", "object.__setattr__"):
            out.append((node.lineno, f"{ast.unparse(node.func)}({node.args[0].id}, ...)"))
        while targets:  # the assigned names themselves (`ctx.updater.step = ` is the updater's)
            t = targets.pop()
            if isinstance(t, ast.Tuple | ast.List):
                targets.extend(t.elts)
            elif isinstance(t, ast.Starred):
                targets.append(t.value)
            elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) \
                    and t.value.id in CONTEXT_NAMES:
                out.append((t.lineno, f"{t.value.id}.{t.attr}"))
    return out


def test_no_code_attaches_attributes_to_a_context_or_stage():
    """The stage is built once (aster.train.stage.open_stage and the builders on it): no code
    anywhere (trainers, tests, benches, scripts) assigns to a context's or stage's attribute;
    a stage that differs is a new one (dataclasses.replace)."""
    found = [f"{path.relative_to(ROOT)}:{line}: {what}" for path in SOURCES
             if path != Path(__file__)
             for line, what in _assigned_attributes(ast.parse(path.read_text()))]
    assert not found, "\n".join(found)


def _calls(tree: ast.AST) -> list[tuple[int, str]]:
    return [(n.lineno, n.func.attr if isinstance(n.func, ast.Attribute) else
             getattr(n.func, "id", "")) for n in ast.walk(tree) if isinstance(n, ast.Call)]


BUILDERS = {"open_stage", "start_sft_stage", "start_rl_stage"}


def test_one_trainer_set_up_sequence():
    """Every trainer, test and bench sets a stage up through the public builders: the Updater
    is made only by a strategy (Strategy.updater), which only open_stage calls; no private
    `_resume` and no `build_updater` by hand; a builder's stage is used, never dropped (the
    context it was built over has no Updater or objective)."""
    stage_py = ROOT / "aster" / "train" / "stage.py"
    found = []
    for path in SOURCES:
        if path == Path(__file__):
            continue
        tree = ast.parse(path.read_text())
        found += [f"{path.relative_to(ROOT)}:{n.lineno}: the stage of {n.value.func.id}() "
                  "dropped" for n in ast.walk(tree) if isinstance(n, ast.Expr)
                  and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)
                  and n.value.func.id in BUILDERS]
        for line, name in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{line}: {name}("
            if name.endswith("_resume") or name == "build_updater":
                found.append(where)
            elif name in ("Updater", "DeepSpeedUpdater") and path.parent != STRATEGY_DIR:
                found.append(where)
            elif name == "updater" and path != stage_py:
                found.append(where)
    assert not found, "\n".join(found)
