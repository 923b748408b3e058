"""STAND-IN for the vllm-ascend platform plugin (and the bit of vllm it imports), for testing
aster's Ascend probes on CPU. It is NOT vllm-ascend: it mirrors the names aster touches, as
read in github.com/vllm-project/vllm-ascend:

- ``vllm_ascend.register()`` returns "vllm_ascend.platform.NPUPlatform" (every release);
- ``vllm_ascend.ascend_config.RlConfig`` exists only after v0.25.1rc1 (commit 2c72a26f,
  "Unified RL Configuration via additional_config.rl_config"); v0.11.0 .. v0.25.1rc1 have no
  rl_config and ignore the key;
- a vllm-ascend built for another vllm fails when its platform module imports vllm internals
  (ImportError), which ``broken=True`` reproduces.
"""

from __future__ import annotations

import importlib.machinery
import types


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package="." not in name)
    mod.__dict__.update(attrs)
    return mod


class _RlConfig:  # the shape of vllm_ascend.ascend_config.RlConfig on main
    _DEFAULTS = {"enabled": False, "sleep_mode_extra_cleanup": False,
                 "enable_training_consistency": False, "enable_batch_invariant": False}


def modules(*, rl_config: bool = False, broken: bool = False) -> dict[str, types.ModuleType]:
    """sys.modules entries for vllm, vllm_ascend and its submodules aster imports."""
    mods = {"vllm": _module("vllm", __version__="0.23.0"),
            "vllm_ascend": _module("vllm_ascend",
                                   register=lambda: "vllm_ascend.platform.NPUPlatform"),
            "vllm_ascend.ascend_config": _module(
                "vllm_ascend.ascend_config", **({"RlConfig": _RlConfig} if rl_config else {}))}
    if broken:
        mods["vllm_ascend.platform"] = None  # import raises ImportError, as a mismatched build
    else:
        mods["vllm_ascend.platform"] = _module("vllm_ascend.platform", NPUPlatform=type(
            "NPUPlatform", (), {"device_name": "npu"}))
    return mods
