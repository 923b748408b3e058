"""aster: a trainer for tool-integrated reasoning (the ASTER recipe) on CPU, NVIDIA and Ascend."""

import os

# torch auto-loads installed device extensions on `import torch`; a vendor extension whose
# driver stack is missing would then break every aster command, CPU ones included. Backends
# import their extension explicitly and lazily instead (see aster/backends/ascend/runtime.py).
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

__version__ = "0.1.0"
