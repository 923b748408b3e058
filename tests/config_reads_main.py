"""The representative runs of tests/test_config_keys.py, in a process of their own with the
config-read recorder installed (tests/config_reads.py): every field a run reads lands in READS.

    python tests/config_reads_main.py runs READS WORK_DIR
    python tests/config_reads_main.py dist READS PORT OUT MODEL STRATEGIES

`runs`: every job command on the tiny config shrunk to seconds (tests/train/small.py), with no
--device and no --output-dir where the config keys stand in for them; a scripted rollout that
calls the tool (a long output, a cell that times out: the tiny random model never calls it);
the vLLM engine built with its class stubbed (its args, no vLLM started).
`dist`: the 2-rank gloo runner of tests/train/test_distributed.py (DDP, FSDP2, DeepSpeed).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import config_reads  # noqa: E402


def _commands(work: Path) -> Path:
    """Every job command; the tiny model the train run saved."""
    from aster.cli import main
    from tests.train.small import SMALL

    os.chdir(work)
    small = [*SMALL, "distributed.strategy=none"]
    assert main(["train", *small]) == 0  # run.device, run.output_dir, run.name: no flags
    run = next((work / "runs").iterdir())
    model = next(run.glob("**/config.json")).parent
    assert main(["eval", "--model", str(model), "data.synthetic.num_eval=2", *small]) == 0
    assert main(["sft", "-o", "sft", "--device", "cpu", *small]) == 0
    assert main(["rl", "--stage", "rl_stage1", "-o", "rl", "--device", "cpu", *small,
                 f"model.path={model}"]) == 0
    assert main(["config", "show", *small]) == 0
    return model


def _tool_calls(model: Path) -> None:
    """Tool calls through the agent loop with the config's sections: a long output (cut) and
    a cell past its timeout (interrupted after the grace period)."""
    from transformers import AutoTokenizer

    from aster.config import load_config
    from aster.rollout import run_rollouts
    from aster.sandbox import SandboxPool
    from tests.rollout.conftest import ScriptedEngine

    def call(code):
        return "<tool_call>\n" + json.dumps({"name": "code_interpreter",
                                             "arguments": {"code": code}}) + "\n</tool_call>"

    cfg = load_config(None, ["rollout.tool_timeout_s=1", "rollout.max_tool_output_chars=64",
                             "rollout.max_concurrency=2", "sandbox.max_sessions=2"])
    tokenizer = AutoTokenizer.from_pretrained(model)
    turns = [call("print('x' * 1000)"), call("import time\ntime.sleep(30)"), "\\boxed{1}"]
    with SandboxPool(cfg.sandbox) as pool:
        (traj,) = run_rollouts(ScriptedEngine(tokenizer, turns), pool,
                               [{"prompt": "1?", "answer": "1"}], cfg.rollout,
                               tokenizer=tokenizer)
    assert traj.num_tool_calls == 2, traj.finish_reason


def _collapse_monitor() -> None:
    """The collapse monitor fed tool calls that collapse while reward stays flat (the tiny
    random model never calls the tool, so its runs leave the comparison unread)."""
    from aster.config import load_config
    from aster.metrics import CollapseMonitor

    monitor = CollapseMonitor(load_config(None, []).rl.collapse_monitor)
    flags = [monitor.update(2.0 if step < 20 else 0.0, 0.0)["collapse_warning"]
             for step in range(200)]
    assert flags[-1] == 1.0


def _vllm_engine_args() -> None:
    """build_engine down to the vLLM engine's constructor, which is stubbed."""
    from aster.backend import select_backend
    from aster.config import load_config
    from aster.rollout import factory, vllm_engine

    class Stub:
        sleep_note = None

        def __init__(self, model_path, **kwargs):
            self.kwargs = kwargs

    vllm_engine.VLLMEngine = Stub
    cfg = load_config(None, ["rollout.engine=vllm"])
    backend = select_backend("cpu")
    backend.require = lambda what: None
    made = factory.build_engine(backend, "unused", cfg.rollout, dtype="float32",
                                   tokenizer=None, max_model_len=256)
    assert isinstance(made, Stub) and "seed" in made.kwargs


def main(argv: list[str]) -> int:
    mode, reads = argv[0], argv[1]
    config_reads.install(reads)
    if mode == "runs":
        _tool_calls(_commands(Path(argv[2])))
        _collapse_monitor()
        _vllm_engine_args()
        return 0
    sys.argv = [str(ROOT / "tests/train/_dist_worker.py"), *argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
