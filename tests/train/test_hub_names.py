"""model.path as a Hugging Face name (configs/qwen3-4b.yaml ships Qwen/Qwen3-4B-Thinking-2507):
resolved offline through a Hub cache the test builds (HF_HUB_CACHE layout:
models--org--name/snapshots/<rev>/, refs/main), downloaded once through rank 0 when online,
and with neither a one-line error naming the download command."""

from __future__ import annotations

import json
import shutil

import pytest

from aster.cli import main
from tests.qwen3.files import write_dapo

REV = "0123456789abcdef0123456789abcdef01234567"
NAME = "tiny-org/Tiny-Qwen3"


def _cache(root, model_dir) -> str:
    """A Hub cache holding `model_dir` as NAME's snapshot REV, refs/main -> REV."""
    repo = root / f"models--{NAME.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / REV)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    return str(repo / "snapshots" / REV)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_cached_name_resolves_offline(qwen3_dirs, offline):
    from aster.train.model_source import check_model_path, resolve_model_path

    snapshot = _cache(offline, qwen3_dirs["thinking"])
    check_model_path(NAME)
    never = lambda fn, what: pytest.fail("a cached model is not downloaded")  # noqa: E731
    assert resolve_model_path(NAME, never) == snapshot


def test_uncached_name_offline_is_one_line(offline, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_dapo(tmp_path / "dapo.parquet", n=2)
    assert main(["rl", "--config", "qwen3-4b-rl-stage1", "-o", "x", "--device", "cpu",
                 f"model.path={NAME}", "data.rl_path=dapo.parquet"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("aster:")]
    assert len(err) == 1
    assert f"hf download {NAME}" in err[0] and f"huggingface-cli download {NAME}" in err[0]
    assert not (tmp_path / "x").exists()


def test_a_path_that_is_no_name_and_no_directory_is_one_line(tmp_path):
    from aster.train.model_source import ModelPathError, check_model_path

    with pytest.raises(ModelPathError, match="nor a Hugging Face name"):
        check_model_path(str(tmp_path / "a" / "b"))


def test_uncached_name_online_is_downloaded_once_on_rank_0(qwen3_dirs, tmp_path, monkeypatch):
    import huggingface_hub

    from aster.train import model_source
    from aster.train.model_source import resolve_model_path

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    real, downloads = huggingface_hub.snapshot_download, []

    def fake(repo_id, *, cache_dir=None, local_files_only=False, **kw):
        if local_files_only:
            return real(repo_id, cache_dir=cache_dir, local_files_only=True, **kw)
        downloads.append((repo_id, cache_dir))  # no network here: the "download" fills the cache
        return _cache(cache, qwen3_dirs["thinking"])

    monkeypatch.setattr(model_source, "snapshot_download", fake)
    calls = []

    def on_main(fn, what):
        calls.append(what)
        fn()

    path = resolve_model_path(NAME, on_main)
    assert downloads == [(NAME, str(cache))] and calls == [f"downloading {NAME}"]
    assert (cache / f"models--{NAME.replace('/', '--')}" / "snapshots" / REV) == \
        type(cache)(path)


def test_rl_trains_from_a_cached_hub_name(qwen3_dirs, offline, tmp_path, monkeypatch, capsys):
    """The shipped stage config with model.path a Hub name, offline: the step runs and the
    stage's model is written (check_inputs refused any path without a local config.json)."""
    monkeypatch.chdir(tmp_path)
    _cache(offline, qwen3_dirs["thinking"])
    write_dapo(tmp_path / "dapo.parquet", n=2)
    rc = main(["rl", "--config", "qwen3-4b-rl-stage1", "-o", "run", "--device", "cpu",
               f"model.path={NAME}", "data.rl_path=dapo.parquet", "model.dtype=float32",
               "model.gradient_checkpointing=false", "distributed.strategy=none",
               "logging.tensorboard=false", "rollout.engine=hf", "rl.prompts_per_step=2",
               "rl.group_size=2", "rl.mini_batch_prompts=2", "rl.stage1.max_steps=1",
               "rl.stage1.max_response_tokens=16", "rollout.max_response_tokens=16"])
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    assert (tmp_path / "run" / "rl_stage1" / "model" / "config.json").is_file()
    records = (tmp_path / "run" / "rollouts" / "rl_stage1.jsonl").read_text().splitlines()
    assert [len(json.loads(r)["rewards"]) for r in records] == [2, 2]


def test_a_failed_download_is_one_line_naming_the_command(tmp_path, monkeypatch):
    import huggingface_hub

    from aster.train import model_source
    from aster.train.model_source import ModelPathError, resolve_model_path

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    real = huggingface_hub.snapshot_download

    def unreachable(repo_id, *, cache_dir=None, local_files_only=False, **kw):
        if local_files_only:
            return real(repo_id, cache_dir=cache_dir, local_files_only=True, **kw)
        raise ConnectionError("the Hub cannot be reached\nmore detail")

    monkeypatch.setattr(model_source, "snapshot_download", unreachable)
    with pytest.raises(ModelPathError) as err:
        resolve_model_path(NAME, lambda fn, what: fn())
    assert "\n" not in str(err.value) and f"hf download {NAME}" in str(err.value)
    assert "ConnectionError: the Hub cannot be reached" in str(err.value)
