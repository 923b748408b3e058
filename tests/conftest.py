"""Test-wide setup: CPU-first, hardware tests skip cleanly without their hardware."""

from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run under the interpreter when there is no GPU; the flag must be set before
# any @triton.jit function is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: intra-op threads only add contention (decoding a tiny model is
# ~15x slower with 2 threads than with 1 on a 2-core box).
torch.set_num_threads(1)


def _npu_available() -> bool:
    from aster.backend import backend_class

    return backend_class("npu").is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    skip_npu = pytest.mark.skip(reason="needs an Ascend NPU with torch_npu and CANN")
    has_cuda = torch.cuda.is_available()
    has_npu = None
    for item in items:
        if item.get_closest_marker("cuda") and not has_cuda:
            item.add_marker(skip_cuda)
        if item.get_closest_marker("npu"):
            has_npu = _npu_available() if has_npu is None else has_npu
            if not has_npu:
                item.add_marker(skip_npu)


# ---- real Qwen3 checkpoints (the real tokenizer, tiny random weights) ---------------------------
REAL_TEMPLATES = ("hybrid", "thinking")


@pytest.fixture(scope="session")
def qwen3_dirs(tmp_path_factory) -> dict[str, str]:
    """{"hybrid": dir, "thinking": dir}: Qwen3ForCausalLM (vocab 151936, hidden 64, one layer)
    with random weights and the real Qwen3 tokenizer files; the chat template is the real hybrid
    one (Qwen3-1.7B / Qwen3-4B) or the Qwen3-4B-Thinking-2507 one (tests/qwen3/templates.py)."""
    from tests.qwen3.model import build_qwen3_dir

    root = tmp_path_factory.mktemp("qwen3")
    return {name: build_qwen3_dir(root / name, name) for name in REAL_TEMPLATES}


@pytest.fixture(scope="session")
def template_tokenizers(qwen3_dirs, tmp_path_factory) -> dict:
    """The tokenizers of the three templates every rendering test runs under: the real Qwen3
    hybrid and Thinking-2507 ones and the tiny default's."""
    from transformers import AutoTokenizer

    from aster.tiny_model import TinyModelConfig, build_tiny_model

    tiny = build_tiny_model(tmp_path_factory.mktemp("tiny_templates"), TinyModelConfig(), seed=0)
    toks = {name: AutoTokenizer.from_pretrained(path) for name, path in qwen3_dirs.items()}
    toks["tiny"] = AutoTokenizer.from_pretrained(tiny)
    return toks
