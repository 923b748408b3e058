"""Lazy, guarded import of torch_npu (the only place aster imports it).

torch_npu registers itself as a torch device backend; torch >= 2.5 auto-loads such backends on
`import torch` unless TORCH_DEVICE_BACKEND_AUTOLOAD=0 (aster/__init__.py sets that default so
a broken CANN install cannot break `import aster` on a CPU-only run). On machines where
torch_npu is installed but CANN is not set up, its import raises ImportError, OSError
(libascendcl.so) or RuntimeError; those become one readable reason.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from aster.backends.common import has_module

CANN_HINT = ("source the CANN environment (e.g. source /usr/local/Ascend/ascend-toolkit/set_env.sh) "
             "and check npu-smi info")
INSTALL_HINT = ("pip install 'aster[ascend]' (torch-npu 2.10.0.post4 and vllm-ascend 0.23.0 on "
                "torch 2.10.0: bash scripts/install.sh ascend) with CANN 9.0.1 installed")

_MODULE: ModuleType | None = None
_ERROR: str | None = None


def import_torch_npu() -> tuple[ModuleType | None, str | None]:
    """(torch_npu module, None) or (None, one-line reason). Cached after the first call."""
    global _MODULE, _ERROR
    if _MODULE is not None or _ERROR is not None:
        return _MODULE, _ERROR
    if not has_module("torch_npu"):
        _ERROR = f"torch_npu is not installed; {INSTALL_HINT}, or use --device cpu"
        return None, _ERROR
    try:
        _MODULE = importlib.import_module("torch_npu")
    except (ImportError, OSError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _ERROR = f"torch_npu is installed but failed to import ({first_line}); {CANN_HINT}"
    return _MODULE, _ERROR


def npu_device_count(torch_npu: ModuleType) -> int:
    """Visible NPUs (0 when the runtime cannot see any)."""
    try:
        return int(torch_npu.npu.device_count()) if torch_npu.npu.is_available() else 0
    except RuntimeError:
        return 0


def reset_cache() -> None:
    """Forget the cached import (tests swap a stand-in torch_npu in and out)."""
    global _MODULE, _ERROR
    _MODULE, _ERROR = None, None
