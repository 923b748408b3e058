"""Sharded checkpoints (torch.distributed.checkpoint): FSDP2 on 2 gloo ranks saves, is killed
after step 2 of 4 and resumes on 2 ranks with bitwise the uninterrupted run's metrics; the same
checkpoint resumes on 1 rank (strategy none) and on 4 ranks (FSDP2) with losses within 1e-5 of
the 2-rank run (only the order of the reductions differs); each of 2 ranks reads about half of
the checkpoint's bytes (counted by chunk in DCP's file reader). Single-process: a save that fails midway leaves no checkpoint
and the previous one intact; a checkpoint of the old single-file format is refused in one line.

The runner (tests/train/_ckpt_worker.py) imports once and forks each phase's ranks: ~30 s on
a 2-core box.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.small import deterministic_part

WORKER = Path(__file__).with_name("_ckpt_worker.py")
STEPS = 4


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    proc = subprocess.run([sys.executable, str(WORKER), str(out), str(tiny_model_dir)],
                          timeout=600, capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _steps(runs: Path, name: str) -> list[dict]:
    return json.loads((runs / name / "result.json").read_text())


def test_fsdp2_resume_on_two_ranks_is_bitwise(runs):
    whole = deterministic_part(_steps(runs, "whole"))
    assert [m["step"] for m in whole] == list(range(1, STEPS + 1))
    assert len(set(m["loss"] for m in whole)) == STEPS  # the steps really train
    assert [m["step"] for m in _steps(runs, "cut")] == [1, 2]
    assert deterministic_part(_steps(runs, "resume-2")) == whole


@pytest.mark.parametrize("world", [1, 4])
def test_resume_on_another_world_size(runs, world):
    whole = _steps(runs, "whole")
    got = _steps(runs, f"resume-{world}")
    assert [m["step"] for m in got] == [m["step"] for m in whole]
    assert [m["loss"] for m in got[:2]] == [m["loss"] for m in whole[:2]]  # before the cut
    for key in ("loss", "grad_norm", "lr"):
        assert [m[key] for m in got[2:]] == pytest.approx([m[key] for m in whole[2:]],
                                                          rel=1e-5), key


def test_each_rank_reads_its_share(runs):
    """Each of 2 ranks reads about half of the checkpoint's bytes (the old single state.pt:
    all of it on every rank)."""
    ranks = [json.loads((runs / "bytes" / f"rank{r}.json").read_text()) for r in range(2)]
    total = ranks[0]["total"]
    assert total > 1_000_000  # weights + AdamW moments of the tiny model
    for r in ranks:
        # half of the shards, give or take the padding of uneven shards, DCP's metadata and
        # the side files
        assert 0.4 * total < r["read"] < 0.6 * total, (r, total)
    checkpoint = runs / "cut" / "checkpoints" / "sft" / "step-00000002"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "dcp", "meta.json", "rank-00000.pt", "rank-00001.pt"]
    assert json.loads((checkpoint / "meta.json").read_text())["world_size"] == 2


def _tiny_state():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    from aster.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

    model, optimizer = _tiny_state()
    first = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(dcp, "save", disk_full)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 2, model=model, optimizer=optimizer)
    assert list_checkpoints(tmp_path) == [first]
    load_checkpoint(first, model=model, optimizer=optimizer)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_old_single_file_checkpoint_is_refused(tmp_path):
    from aster.train.checkpoint import CheckpointMismatchError, load_checkpoint

    old = tmp_path / "step-00000003"
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"step": 3, "stage": "sft"}))
    torch.save({}, old / "state.pt")
    model, optimizer = _tiny_state()
    with pytest.raises(CheckpointMismatchError, match="older aster.*start the stage afresh"):
        load_checkpoint(old, model=model, optimizer=optimizer)


def test_fsdp2_weight_stream_is_the_full_weights_in_bf16(runs):
    """strategy.weight_buckets on 2 FSDP2 ranks: one parameter gathered at a time, every rank
    gets every weight in full, in the compute dtype, in buckets within the bound."""
    for r in range(2):
        got = json.loads((runs / "buckets" / f"rank{r}.json").read_text())
        assert got["strategy"] == "fsdp2" and got["buckets"] > 1 and got["over"] == 0
        assert got["names"] and got["dtypes"] == ["torch.bfloat16"]
        if r == 0:  # rank 0 holds the gathered reference
            assert got["equal"]
