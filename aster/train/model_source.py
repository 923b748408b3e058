"""model.path as users write it: a model directory, or a Hugging Face name
(`Qwen/Qwen3-4B-Thinking-2507`, as configs/qwen3-4b.yaml ships) resolved through the local
Hugging Face cache (offline included) or downloaded once. See docs/recipe.md, "Model paths"."""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from aster.errors import AsterUserError

# <run>/<stage>/model: what each training stage writes (aster.train.pipeline.stage_model_dir)
STAGE_OUTPUTS = ("sft", "rl_stage1", "rl_stage2")
# org/name as the Hub spells repository ids: one slash, no path-like parts
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class ModelPathError(AsterUserError):
    """model.path does not point at a loadable model directory."""


def is_model_dir(path: str) -> bool:
    return (Path(path) / "config.json").is_file()


def is_hub_name(path: str) -> bool:
    return bool(_HUB_NAME.fullmatch(path)) and ".." not in path and not Path(path).exists()


def _cache_dir() -> str | None:
    # read at call time: huggingface_hub.constants froze HF_HUB_CACHE when it was imported
    return os.environ.get("HF_HUB_CACHE") or None


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached_snapshot(name: str) -> str | None:
    """The cached snapshot directory of `name` (refs/main), without touching the network."""
    try:
        path = snapshot_download(name, cache_dir=_cache_dir(), local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return path if is_model_dir(path) else None


def _not_found(name: str, why: str) -> ModelPathError:
    where = _cache_dir() or "the Hugging Face cache"
    return ModelPathError(f"model.path={name!r} is not in {where} and {why}; fetch it with "
                          f"`hf download {name}` (or `huggingface-cli download {name}`), or "
                          "point model.path at a model directory")


def check_model_path(path: str) -> None:
    """Before anything is written: a model directory, a cached Hub name, or a Hub name that can
    still be downloaded (online)."""
    if not path or is_model_dir(path):
        return
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-1] == "model" and parts[-2] in STAGE_OUTPUTS:
        run = str(Path(*parts[:-2]))
        raise ModelPathError(f"model.path={path!r} does not exist yet: the {parts[-2]} stage of "
                             f"the run in {run} writes it; run that stage first (with "
                             f"-o {run}) or point model.path at a model directory")
    if not is_hub_name(path):
        raise ModelPathError(f"model.path={path!r} is not a model directory (no config.json) "
                             "nor a Hugging Face name (org/name); point it at a model "
                             "directory, a Hub name, or leave it empty for the tiny model")
    if cached_snapshot(path) is None and _offline():
        raise _not_found(path, "HF_HUB_OFFLINE forbids downloading it")


def download(name: str) -> str:
    """Fetch `name` into the cache (rank 0 only: the other ranks wait, then read the cache)."""
    try:
        path = snapshot_download(name, cache_dir=_cache_dir())
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: all one line
        raise _not_found(name, f"downloading it failed ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not is_model_dir(path):
        raise ModelPathError(f"model.path={name!r}: the Hub snapshot {path} has no config.json;"
                             " give a causal LM's name or a model directory")
    return path


def resolve_model_path(path: str, on_main) -> str:
    """A model directory for `path`: itself, its cached snapshot, or (rank 0 downloading it
    while the others wait, through `on_main(fn, what)`) a fresh one."""
    if is_model_dir(path) or not is_hub_name(path):
        return path
    cached = cached_snapshot(path)
    if cached:
        return cached
    if _offline():
        raise _not_found(path, "HF_HUB_OFFLINE forbids downloading it")
    on_main(lambda: download(path), f"downloading {path}")
    cached = cached_snapshot(path)
    if cached is None:  # rank 0 wrote a cache this rank cannot see (not shared)
        raise _not_found(path, "this rank does not see the cache rank 0 downloaded it into "
                               "(set HF_HUB_CACHE to a shared directory)")
    return cached
