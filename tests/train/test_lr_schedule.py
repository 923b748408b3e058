"""The SFT learning-rate schedules (aster.train.common.build_scheduler), from their definitions:
linear warmup, then constant / cosine / linear to 0, or wsd (constant, then linear to 0 over
the last decay_steps), read off the optimizer after each step."""

from __future__ import annotations

import math

import pytest
import torch

from aster.train.common import build_scheduler
from aster.train.config import SFTConfig


def _lrs(schedule: str, total: int = 100, warmup: int = 10, decay: int = 0) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total, warmup, schedule, decay_steps=decay)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_each_schedule():
    for name in ("constant", "cosine", "linear", "wsd"):
        lrs = _lrs(name, decay=20)
        assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)]), name
    assert _lrs("constant")[10:] == pytest.approx([1.0] * 90)
    cos = _lrs("cosine")
    assert cos[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert _lrs("linear")[55] == pytest.approx(1 - 45 / 90)


def test_wsd_is_flat_until_the_last_decay_steps_then_linear_to_zero():
    lrs = _lrs("wsd", decay=20)
    assert lrs[10:80] == pytest.approx([1.0] * 70)  # stable: no decay before step 80
    assert lrs[80:] == pytest.approx([(100 - s) / 20 for s in range(80, 100)])
    assert lrs[-1] == pytest.approx(0.05) and all(a > b for a, b in zip(lrs[80:], lrs[81:]))


def test_decay_ratio_is_checked():
    with pytest.raises(ValueError, match="sft.decay_ratio"):
        SFTConfig(decay_ratio=0.0)
    with pytest.raises(ValueError, match="sft.decay_ratio"):
        SFTConfig(warmup_ratio=0.5, decay_ratio=0.6)
