"""The shipped qwen3-4b-reproduction profile: the reproduction's tool environment renders from
the config, its sandbox binds the prelude's names, and one RL step runs under it (tiny random
Qwen3 checkpoint with the real tokenizer and the Thinking-2507 template)."""

from __future__ import annotations

import json

import yaml

from aster.cli import main
from aster.config import load_config
from aster.sandbox import SandboxPool
from tests.qwen3.files import write_dapo
from tests.test_real_qwen3 import SMALL


def test_the_profile_holds_the_reproductions_tool_environment():
    cfg = load_config("qwen3-4b-reproduction")
    assert cfg.rollout.tool_timeout_s == 30.0 and cfg.rollout.max_tool_output_chars == 0
    assert cfg.rollout.max_calls_per_turn == 1 and cfg.rollout.on_parse_error == "end"
    assert cfg.sandbox.memory_mb == 1024 and cfg.rollout.reward_match == "strict_box"
    assert (cfg.eval.temperature, cfg.eval.top_p) == (1.0, 1.0)
    paper = load_config("qwen3-4b")
    assert (paper.eval.temperature, paper.eval.top_p) == (0.6, 0.95)  # the paper's


def test_a_cell_uses_the_preludes_names_under_the_profile():
    cfg = load_config("qwen3-4b-reproduction")
    cfg.sandbox.max_sessions, cfg.sandbox.spare_workers = 2, 1
    with SandboxPool(cfg.sandbox) as pool, pool.session() as s:
        r = s.run("print(sp.Integer(3) + math.pi)")
        assert r.ok and r.output == "6.14159265358979\n", r
        r = s.run("print(sympy.factorint(360), list(itertools.permutations('ab')))")
        assert r.ok and r.output == "{2: 3, 3: 2, 5: 1} [('a', 'b'), ('b', 'a')]\n", r


def test_one_rl_step_under_the_profile(qwen3_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_dapo(tmp_path / "dapo.parquet", n=2)
    rc = main(["rl", "--config", "qwen3-4b-reproduction", "--stage", "rl_stage1", "-o", "run",
               *SMALL,
               f"model.path={qwen3_dirs['thinking']}", "data.rl_path=dapo.parquet",
               "rl.prompts_per_step=2", "rl.group_size=2", "rl.mini_batch_prompts=2",
               "rl.stage1.max_steps=1", "rl.stage1.max_response_tokens=24",
               "rollout.max_response_tokens=24", "rollout.engine=hf",
               "sandbox.max_sessions=4", "rollout.max_concurrency=4",
               "sandbox.spare_workers=1"])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    records = [json.loads(x) for x in
               (tmp_path / "run" / "rollouts" / "rl_stage1.jsonl").read_text().splitlines()]
    assert [len(r["rewards"]) for r in records] == [2, 2]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["sandbox"]["prelude"] == "import sympy as sp\nimport math, sympy, itertools"
    assert saved["rollout"]["max_calls_per_turn"] == 1
    assert saved["rollout"]["on_parse_error"] == "end"
