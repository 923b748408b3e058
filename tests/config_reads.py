"""Which config fields a run reads: a recorder for tests/test_config_keys.py.

`install(path)` replaces `__getattribute__` on every config dataclass (the classes reachable
from AsterConfig) with one that appends `ClassName.field` to `path` the first time this
process reads that field. The file is opened in append mode for every new name, so ranks
forked by a test (tests/train/ranks.py) and forked sandbox workers add theirs to the same file.

Not counted as a use:
- reads while a config's own `__post_init__` runs (a section validating itself or its
  neighbours; `dataclasses.replace` runs it again on the copy);
- reads from `dataclasses` (replace, asdict), the generated repr / eq, and `aster.configio` (building,
  overriding and serialising the config: `aster config show`, `config.yaml`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import threading
import typing

SKIP_MODULES = frozenset({"dataclasses", "aster.configio", "copy"})
# the methods dataclasses generates (exec'd from a string, with the config module's globals)
SKIP_FUNCTIONS = frozenset({"__repr__", "__eq__", "__init__", "__hash__"})

_state = threading.local()
_seen: set[str] = set()
_pid = [0]
_path: list[str] = []


def config_classes(root=None) -> dict[type, list[str]]:
    """Every config dataclass reachable from `root` (AsterConfig) -> the dotted prefixes it
    appears at (RLStageConfig: rl.stage1. and rl.stage2.)."""
    from aster.config import AsterConfig

    out: dict[type, list[str]] = {}

    def walk(cls, prefix):
        out.setdefault(cls, []).append(prefix)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")

    walk(root or AsterConfig, "")
    return out


def _validating() -> bool:
    return getattr(_state, "depth", 0) > 0


def _record(key: str) -> None:
    if _pid[0] != os.getpid():  # a forked child: its own first reads go to the file too
        _pid[0] = os.getpid()
        _seen.clear()
    if key in _seen:
        return
    _seen.add(key)
    with open(_path[0], "a", encoding="utf-8") as fh:
        fh.write(key + "\n")


def _hook(cls, names: frozenset[str]):
    base = object.__getattribute__

    def __getattribute__(self, name):
        if name in names and not _validating():
            frame = sys._getframe(1)
            if (frame.f_globals.get("__name__", "") not in SKIP_MODULES
                    and not (frame.f_code.co_filename == "<string>"
                             and frame.f_code.co_name in SKIP_FUNCTIONS)):
                _record(f"{type(self).__name__}.{name}")
        return base(self, name)

    return __getattribute__


def _counting(post_init):
    @functools.wraps(post_init)
    def __post_init__(self, *args, **kwargs):
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return post_init(self, *args, **kwargs)
        finally:
            _state.depth -= 1

    return __post_init__


def install(path) -> None:
    """Record every config dataclass's field reads in `path` (see the module)."""
    _path[:] = [str(path)]
    _pid[0] = os.getpid()
    for cls in config_classes():
        names = frozenset(f.name for f in dataclasses.fields(cls))
        cls.__getattribute__ = _hook(cls, names)
        if "__post_init__" in cls.__dict__:
            cls.__post_init__ = _counting(cls.__dict__["__post_init__"])


def keys_read(path) -> set[str]:
    """The dotted keys read, from the recorder's file (a class at several places, like
    RLStageConfig at rl.stage1 and rl.stage2, counts at each: the fields are the same code)."""
    classes = {cls.__name__: prefixes for cls, prefixes in config_classes().items()}
    keys = set()
    for line in open(path, encoding="utf-8").read().split():
        cls, name = line.split(".")
        keys.update(f"{prefix}{name}" for prefix in classes[cls])
    return keys
