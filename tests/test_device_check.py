"""scripts/device_check.sh, the prepared GPU check: its dry run on CPU (what CI can run),
and the driver's handling of steps that hang or crash (reported, never fatal)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


driver = _load("device_check")
steps = _load("device_steps")


def _run_check(tmp_path, *args):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh"), *args],
                          capture_output=True, text=True, env=env, timeout=120)
    return proc, json.loads((tmp_path / "device_check.json").read_text())


def test_dry_run_reports_every_step_skipped_and_exits_0(tmp_path):
    proc, record = _run_check(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert record["dry_run"] is True and record["kind"] == "aster-device-check"
    assert [r["step"] for r in record["steps"]] == [s.name for s in driver.STEPS]
    assert {(r["status"], r["summary"]) for r in record["steps"]} == {("skipped",
                                                                       "skipped: no GPU")}
    for step in driver.STEPS:  # the table: one line per step
        assert any(line.startswith(step.name) and "skipped: no GPU" in line
                   for line in proc.stdout.splitlines()), step.name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_without_a_gpu_the_check_is_a_dry_run(tmp_path):
    proc, record = _run_check(tmp_path)
    assert proc.returncode == 0 and record["dry_run"] is True
    assert "no usable GPU here" in proc.stdout


def test_every_step_has_an_implementation_and_bad_names_are_refused(tmp_path, capsys):
    assert set(steps.STEP_FUNCS) == {s.name for s in driver.STEPS}
    assert set(steps.SMOKE_STEPS) <= set(steps.STEP_FUNCS)
    assert driver.main(["--only", "envv", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown step 'envv'" in capsys.readouterr().err


def test_a_hung_or_crashing_step_is_reported_and_the_rest_go_on(tmp_path, monkeypatch):
    script = tmp_path / "steps.py"
    script.write_text("import sys, time\n"
                      "if sys.argv[1] == 'hang': time.sleep(60)\n"
                      "raise RuntimeError('CUDA error: an illegal memory access')\n")
    monkeypatch.setattr(driver, "STEPS_PY", script)
    hung = driver.run_step(driver.Step("hang", 1, ""), 1, tmp_path)
    assert hung["status"] == "timeout" and "killed after 1 s" in hung["summary"]
    crashed = driver.run_step(driver.Step("crash", 30, ""), 30, tmp_path)
    assert crashed["status"] == "fail" and "illegal memory access" in crashed["summary"]


@pytest.mark.slow
def test_the_in_process_steps_run_on_cpu_at_toy_sizes(tmp_path):
    # Exercises the steps' code (kernels through Triton's interpreter, gloo for NCCL, a toy
    # Qwen3) before a GPU lease is spent on it; the figures mean nothing.
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "device_steps.py"),
                           ",".join(steps.SMOKE_STEPS), "--smoke", "--out", str(out), "--work",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {k: v["status"] for k, v in results.items()} == {k: "ok" for k in steps.SMOKE_STEPS}, \
        {k: v["summary"] for k, v in results.items()}
