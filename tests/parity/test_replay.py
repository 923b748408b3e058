"""Rollout dump and replay across kernel implementations (aster.train.replay).

One `aster rl` step dumps its rollouts with the float64 reference kernels; replays with the
chunked kernels skip generation, train on the dumped trajectories and write the same kind of
parity record, which `aster parity compare` checks against the dumping run's record.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from aster.cli import main
from tests.train.small import SMALL

ARGS = [*SMALL, "rl.stage1.max_steps=1"]
STEP = "rl_stage1/step000001"


def _rl(out, *overrides, dump=None, replay=None) -> int:
    """`aster rl` on the small config (options before the KEY=VALUE overrides)."""
    flags = (["--dump-rollouts", str(dump)] if dump else []) + \
        (["--replay-rollouts", str(replay)] if replay else [])
    return main(["rl", "--stage", "rl_stage1", "--device", "cpu", "-o", str(out), *flags, *ARGS,
                 *overrides])


def _set_rewards(dump_dir, rewards: list[float]) -> None:
    """Rewrite the dumped rewards (a tampered, or a re-labelled, dump)."""
    path = dump_dir / STEP / "rank0.pt"
    payload = torch.load(path, weights_only=True)
    for traj, reward in zip(payload["trajectories"], rewards):
        traj["reward"] = reward
    torch.save(payload, path)


def _record(run_dir) -> str:
    return str(run_dir / "parity" / f"{STEP}.json")


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aster:")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    """A dumping run with the reference kernels: (its run dir, the dump dir)."""
    root = tmp_path_factory.mktemp("replay")
    run, dump = root / "dump_run", root / "dump"
    assert _rl(run, "backend.kernel_impl=reference", dump=dump) == 0
    return run, dump


def test_dump_layout_and_metadata(dumped):
    run, dump = dumped
    meta = json.loads((dump / STEP / "meta.json").read_text())
    assert meta["stage"] == "rl_stage1" and meta["step"] == 1 and meta["group_size"] == 2
    assert meta["world_size"] == 1 and meta["tokenizer"]["size"] > 0 and meta["config_digest"]
    payload = torch.load(dump / STEP / "rank0.pt", weights_only=True)
    trajs = payload["trajectories"]
    assert len(trajs) == 4  # rl.prompts_per_step=2 x rl.group_size=2
    for t in trajs:
        assert len(t["response_ids"]) == len(t["loss_mask"]) == len(t["rollout_logprobs"])
    # the dumping run's record is in the dump and in its run directory, identical
    assert json.loads((dump / STEP / "record.json").read_text()) == \
        json.loads((run / "parity" / f"{STEP}.json").read_text())
    assert not list(dump.rglob("*.tmp"))


def test_replay_on_other_kernels_matches_and_a_tampered_dump_fails(dumped, tmp_path, capsys):
    run, dump = dumped
    model = f"model.path={run / 'base_model'}"
    # 1. replay with the chunked kernels: the dumping run's record and the replay's agree
    assert _rl(tmp_path / "replay", model, "backend.kernel_impl=chunked", replay=dump) == 0
    replay = json.loads(open(_record(tmp_path / "replay")).read())
    assert replay["source"] == "replay" and replay["kernel_impl"] == "chunked"
    assert main(["parity", "compare", str(dump / STEP / "record.json"),
                 _record(tmp_path / "replay")]) == 0
    # 2. rewards with a learning signal (the random tiny model scores 0 everywhere): replayed
    #    on both kernel implementations, the loss, grad norm and update still agree
    relabelled = tmp_path / "relabelled"
    shutil.copytree(dump, relabelled)
    _set_rewards(relabelled, [1.0, 0.0, 0.0, 1.0])
    for impl in ("reference", "chunked"):
        assert _rl(tmp_path / impl, model, f"backend.kernel_impl={impl}",
                   replay=relabelled) == 0
    capsys.readouterr()
    assert main(["parity", "compare", _record(tmp_path / "reference"),
                 _record(tmp_path / "chunked")]) == 0
    chunked = json.loads(open(_record(tmp_path / "chunked")).read())["results"]["float32"]
    assert chunked["update.grad_norm"] > 0 and chunked["weights_delta.sum"] != 0
    assert "24 of 24 quantities within tolerance" in capsys.readouterr().out
    # 3. against the original dump's record, the changed rewards are caught: exit 1
    assert main(["parity", "compare", str(dump / STEP / "record.json"),
                 _record(tmp_path / "chunked")]) == 1
    out = capsys.readouterr().out
    assert "input.reward_sum" in out and "NO" in out


def test_replay_errors_are_one_line(dumped, tmp_path, capsys):
    run, dump = dumped
    assert _rl(tmp_path / "a", replay=tmp_path / "nope") == 2
    assert "no such directory" in _error_line(capsys)
    assert _rl(tmp_path / "b", "rl.group_size=4", replay=dump) == 2
    assert "rl.group_size=2" in _error_line(capsys)
    assert _rl(tmp_path / "c", replay=dump, dump=tmp_path / "d") == 2
    assert "set one" in _error_line(capsys)
    assert _rl(tmp_path / "d", "distributed.strategy=deepspeed", replay=dump) == 2
    assert "zero_stage" in _error_line(capsys)
    for name in "abcd":
        assert not (tmp_path / name).exists()


def test_replay_with_another_tokenizer_is_refused(dumped, tmp_path, capsys):
    from aster.tiny_model import TinyModelConfig, build_tiny_model

    _, dump = dumped
    other = build_tiny_model(tmp_path / "other_model", TinyModelConfig(vocab_size=400), seed=0)
    assert _rl(tmp_path / "run", f"model.path={other}", replay=dump) == 2
    assert "another tokenizer" in _error_line(capsys)


def test_compare_lists_and_exact_inputs():
    from aster.parity_record import compare_records, tolerance

    assert tolerance("float32", "input.reward_sum") == (0.0, 0.0)
    assert tolerance("float32", "update.loss") == (2e-4, 1e-5)

    def rec(**values):
        return {"kind": "rl_step", "results": {"float32": values}}

    base = rec(**{"old_logp.per_token": [-1.0, -2.0], "input.reward_sum": 1.0})
    rows, ok = compare_records(base, rec(**{"old_logp.per_token": [-1.0, -2.0000001],
                                            "input.reward_sum": 1.0}))
    assert ok
    for other in (rec(**{"old_logp.per_token": [-1.0], "input.reward_sum": 1.0}),
                  rec(**{"old_logp.per_token": [-1.0, -2.1], "input.reward_sum": 1.0}),
                  rec(**{"old_logp.per_token": [-1.0, -2.0], "input.reward_sum": 1.0 + 1e-12})):
        assert not compare_records(base, other)[1]
