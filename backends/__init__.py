"""Device backends (installed as aster.backends): cpu, cuda, ascend. See aster/backend.py."""
