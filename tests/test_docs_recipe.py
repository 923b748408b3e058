"""docs/extending.md's example objective is real: its class plus its one registry line make
an objective that `rl.loss` accepts and that the trainer's GRPO step trains on the bandit."""

from __future__ import annotations

import re
from pathlib import Path

from aster.algo import losses
from tests.train.bandit import bandit_context, p_target, tiny_policy, train

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def readme_example() -> tuple[str, str, str]:
    """(class source, registry name, class name) of the page's first Python block."""
    block = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)
    registry = re.search(r'^LOSSES = \{\.\.\., "(\w+)": (\w+)\}$', block, re.M)
    return block[:registry.start()], registry.group(1), registry.group(2)


def test_the_readme_objective_is_one_class_and_one_line(monkeypatch):
    source, name, cls_name = readme_example()
    namespace = vars(losses).copy()  # what aster/algo/losses.py has in scope
    exec(compile(source, str(PAGE), "exec"), namespace)
    monkeypatch.setitem(losses.LOSSES, name, namespace[cls_name])  # the registry line
    model = tiny_policy()
    ctx = bandit_context(model, [f"rl.loss={name}"])  # the config check accepts it
    assert type(ctx.objective).__name__ == cls_name
    before = p_target(model)
    metrics = train(ctx, 6)
    assert p_target(model) >= before + 0.3
    assert "logp_mean" in metrics[-1]  # its own metric reaches the step's metrics
