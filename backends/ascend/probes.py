"""Probes for the optional Ascend packages (only called on a machine where torch_npu loaded).

- vllm-ascend: vLLM loads it as a platform plugin at engine start, so the probe imports vllm,
  vllm_ascend and the platform class its ``register()`` names; a vllm-ascend built for
  another vllm, torch or torch_npu fails there and the backend falls back to the hf engine.
- rl_config: vllm-ascend reads ``additional_config.rl_config`` only from the release that
  added ``vllm_ascend.ascend_config.RlConfig`` on; older releases ignore the key.
- triton-ascend: its wheel installs a package named ``triton`` with an ``ascend`` backend
  (``triton.backends.ascend``); there is no module named ``triton_ascend``.
"""

from __future__ import annotations

import functools
import importlib

from aster.backends.common import Probe, has_module, run_probe


def _import_vllm_ascend_platform() -> None:
    importlib.import_module("vllm")
    plugin = importlib.import_module("vllm_ascend")
    module_name, _, cls_name = plugin.register().rpartition(".")
    getattr(importlib.import_module(module_name), cls_name)


@functools.cache
def vllm_ascend_probe() -> Probe:
    """vllm and vllm-ascend import and the NPU platform class loads."""
    if not (has_module("vllm") and has_module("vllm_ascend")):
        return Probe(False, "vllm-ascend is not installed")
    return run_probe("vllm-ascend", _import_vllm_ascend_platform)


@functools.cache
def reads_rl_config() -> bool:
    """True when the installed vllm-ascend reads additional_config.rl_config."""
    if not vllm_ascend_probe().ok:
        return False
    return hasattr(importlib.import_module("vllm_ascend.ascend_config"), "RlConfig")


@functools.cache
def triton_ascend_probe() -> Probe:
    """triton-ascend: Triton with its Ascend backend importable."""
    if not has_module("triton.backends.ascend"):
        return Probe(False, "triton-ascend is not installed (no triton.backends.ascend)")
    return run_probe("triton-ascend",
                     lambda: importlib.import_module("triton.backends.ascend"))


def clear_cache() -> None:
    """Forget the probe results (tests swap packages in and out)."""
    for fn in (vllm_ascend_probe, reads_rl_config, triton_ascend_probe):
        fn.cache_clear()
