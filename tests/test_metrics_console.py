"""The console of a run: SFT shows a progress bar and a summary line every N steps (not a line
per step), RL one line per step; every step still lands in metrics.jsonl."""

from __future__ import annotations

import io
import logging

import pytest

from aster.metrics import MetricsWriter, read_metrics, show_progress


def _sft_steps(writer, total: int) -> None:
    for step in range(1, total + 1):
        writer.write("sft", step, {"loss": float(step), "grad_norm": 1.0, "tokens": 100.0,
                                   "step_time_s": 0.5}, total=total)


def _console(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]


def test_sft_prints_about_20_summary_lines_and_keeps_every_step(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aster")
    writer = MetricsWriter(tmp_path, tensorboard=False, progress=False)
    _sft_steps(writer, 100)
    lines = _console(caplog)
    assert len(lines) == 20
    assert lines[0] == ("[sft] step 5/100 loss 3.0000 reward - tool_calls - resp_len - "
                        "grad_norm 1.0000 tok/s 200 mem - (mean of steps 1-5)")
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 101))


@pytest.mark.parametrize("every, steps", [(30, [30, 60, 90, 100]), (1, list(range(1, 8))),
                                          (50, [7])])
def test_sft_log_every_sets_the_summary_interval(tmp_path, caplog, every, steps):
    caplog.set_level(logging.INFO, logger="aster")
    total = steps[-1]
    writer = MetricsWriter(tmp_path, tensorboard=False, progress=False, summary_every=every)
    _sft_steps(writer, total)
    assert [int(line.split()[2].split("/")[0]) for line in _console(caplog)] == steps


def test_rl_keeps_one_line_per_step(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aster")
    writer = MetricsWriter(tmp_path, tensorboard=False, progress=True, summary_every=50)
    for step in range(1, 6):
        writer.write("rl_stage1", step, {"loss": 0.1, "reward_mean": 0.5})
    assert len(_console(caplog)) == 5


def test_progress_bar_shows_the_loss_only_when_asked_or_on_a_terminal(tmp_path, capsys):
    _sft_steps(MetricsWriter(tmp_path / "a", tensorboard=False, progress="auto"), 10)
    assert "loss=" not in capsys.readouterr().err  # stderr captured: not a terminal
    _sft_steps(MetricsWriter(tmp_path / "b", tensorboard=False, progress=True), 10)
    err = capsys.readouterr().err
    assert "sft: 100%" in err and "10/10" in err and "loss=10.0000" in err
    _sft_steps(MetricsWriter(tmp_path / "c", tensorboard=False, progress=True,
                             is_main=False), 10)
    assert capsys.readouterr().err == ""  # rank 0 only


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_show_progress_setting():
    assert show_progress("auto", _Terminal()) and not show_progress("auto", io.StringIO())
    assert show_progress(True, io.StringIO()) and not show_progress(False, _Terminal())


def test_logging_keys_are_validated():
    from aster.config import load_config
    from aster.errors import ConfigError

    assert load_config(None, ["logging.progress=true"]).logging.progress is True
    assert load_config(None, []).logging.progress == "auto"
    for bad in ("logging.progress=maybe", "logging.sft_log_every=-1", "logging.log_every=0"):
        with pytest.raises((ConfigError, ValueError), match=bad.split("=")[0].split(".")[1]):
            load_config(None, [bad])


def test_the_logging_section_reaches_the_writer(tmp_path):
    from aster.config import load_config

    cfg = load_config(None, ["logging.progress=false", "logging.sft_log_every=7",
                             "logging.log_every=3", "logging.tensorboard=false"])
    writer = MetricsWriter.from_config(tmp_path, cfg.logging)
    assert (writer.progress, writer.summary_every, writer.log_every, writer.tb) == (
        False, 7, 3, None)
