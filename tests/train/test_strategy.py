"""The Strategy registry: the docs' example strategy (docs/distributed.md) runs as written; the
weight stream yields every weight in full, in the compute dtype, in bounded buckets (FSDP2 on 2
ranks: tests/train/test_sharded_checkpoint.py's `buckets` phase)."""

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).parents[2] / "docs" / "distributed.md"


def _docs_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_docs_example_strategy_trains(tiny_model_dir, tmp_path, monkeypatch):
    from aster.backend import select_backend
    from aster.config import load_config
    from aster.metrics import MetricsWriter
    from aster.train import strategy as registry
    from aster.train.pipeline import make_context
    from aster.train.sft import encode_dataset, run_sft
    from tests.train._dist_worker import conversations

    code, line = _docs_blocks()[:2]
    (tmp_path / "frozen_embeddings.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_LOADED", dict(registry._LOADED))
    name, target = re.fullmatch(r'"(.+)": "aster\.train\.strategy\.(.+)",\n',
                                line.split("\n", 1)[1]).groups()
    registry.register_strategy(name, target)  # what the registry line does in the package
    cfg = load_config(None, [f"distributed.strategy={name}", "sft.epochs=1",
                             "sft.global_batch_size=4", "sft.micro_batch_size=2",
                             "sft.lr=1e-2", "sft.warmup_ratio=0", "logging.tensorboard=false"])
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    ctx = make_context(cfg, backend, str(tiny_model_dir), tmp_path / "run",
                       MetricsWriter(tmp_path / "run", tensorboard=False))
    assert type(ctx.strategy).__name__ == "FrozenEmbeddingsStrategy"
    before = {k: v.clone() for k, v in ctx.hf_model.state_dict().items()}
    data, _ = encode_dataset(ctx.tokenizer, conversations(8), 1024)
    run_sft(ctx, data)
    after = ctx.hf_model.state_dict()
    embed = "model.embed_tokens.weight"
    assert torch.equal(after[embed], before[embed])
    assert not torch.equal(after["lm_head.weight"], before["lm_head.weight"])


def test_unknown_strategy_is_one_line():
    from aster.config import load_config
    from aster.errors import ConfigError

    with pytest.raises(ConfigError, match="distributed.strategy='fsdp3' is not known; use one of"):
        load_config(None, ["distributed.strategy=fsdp3"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_buckets_stream_every_weight_in_the_compute_dtype(tiny_model_dir, dtype):
    from transformers import AutoModelForCausalLM

    from aster.backend import select_backend
    from aster.config import load_config
    from aster.train.strategy import build_strategy

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    strategy = build_strategy(load_config().distributed, backend, dtype)
    limit = 100_000
    buckets = list(strategy.weight_buckets(limit, model))
    names = [n for bucket in buckets for n, _ in bucket]
    assert names == list(model.state_dict())
    for bucket in buckets:
        sizes = [t.numel() * t.element_size() for _, t in bucket]
        assert sum(sizes) <= limit or len(bucket) == 1  # a larger tensor goes alone
    assert len(buckets) > 1
    full = model.state_dict()
    for name, tensor in (item for bucket in buckets for item in bucket):
        assert tensor.dtype == dtype
        assert torch.equal(tensor, full[name].to(dtype)), name


def test_the_docs_name_every_registered_strategy():
    from aster.train.strategy import _REGISTRY

    text = DOCS.read_text()
    for name, target in _REGISTRY.items():
        module = target.split(":")[0].rsplit(".", 1)[1]
        assert f"| `{name}` | `{module}.py` |" in text, name
        assert (Path(__file__).parents[2] / "aster" / "train" / "strategy"
                / f"{module}.py").is_file()


def test_a_strategy_refuses_what_it_cannot_do_before_loading(tmp_path):
    """ZeRO-3 holds partitions only: no reference policy, no dump/replay weight checksums (the
    refusals live in strategy/deepspeed.py; the callers ask the strategy)."""
    from aster.config import load_config
    from aster.errors import AsterUserError
    from aster.train.reference import check_reference_policy
    from aster.train.replay import check_rollout_dirs

    zero3 = ["distributed.strategy=deepspeed", "distributed.zero_stage=3"]
    with pytest.raises(AsterUserError, match="rl.kl_coef=0.5 needs a reference policy"):
        check_reference_policy(load_config(None, [*zero3, "rl.kl_coef=0.5"]))
    with pytest.raises(AsterUserError, match="dump/replay records need full parameters"):
        check_rollout_dirs(load_config(None, [*zero3, f"rl.dump_rollouts_dir={tmp_path}"]))
    check_reference_policy(load_config(None, ["distributed.strategy=deepspeed",
                                              "distributed.zero_stage=2", "rl.kl_coef=0.5"]))
    check_rollout_dirs(load_config(None, [f"rl.dump_rollouts_dir={tmp_path}"]))


def test_deepspeed_is_named_in_one_code_file():
    """Only strategy/deepspeed.py imports DeepSpeed or tests a value against its name; the
    registry names its module once (docstrings and help texts aside)."""
    import ast

    root = Path(__file__).parents[2] / "aster"
    found = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] == "deepspeed" for n in names):
                    found.setdefault(path.relative_to(root).as_posix(), []).append("import")
            if isinstance(node, ast.Constant) and node.value == "deepspeed":
                found.setdefault(path.relative_to(root).as_posix(), []).append("name")
    assert set(found) == {"train/strategy/deepspeed.py", "train/strategy/__init__.py"}, found
    assert found["train/strategy/__init__.py"] == ["name"]  # its _REGISTRY line
