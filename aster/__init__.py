"""aster: a trainer for tool-integrated reasoning (the ASTER recipe) on CPU, NVIDIA and Ascend."""

__version__ = "0.1.0"
