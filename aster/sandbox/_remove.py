"""Removing a session's directory without recursion: a cell controls its depth and modes.

``shutil.rmtree`` recurses once per level (a 3,000-deep tree raised RecursionError before the
session's slot was freed) and works by path (past PATH_MAX it fails). This walks with one
directory fd at a time and a stack of names, relative to the fd, never following a symlink.
It runs after the session's processes are dead, so nothing moves the tree meanwhile.
"""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger("aster.sandbox")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str | None) -> bool:
    """Remove `path` and everything under it; False (logged) if something stayed. Never
    raises: a session's leftovers must not stop the pool freeing its slot or closing."""
    if path is None:
        return True
    try:
        _remove(path)
    except FileNotFoundError:
        return True
    except Exception as exc:  # noqa: BLE001 - logged; the caller goes on
        log.warning("sandbox: could not remove %s: %s: %s", path, type(exc).__name__, exc)
        return False
    return True


def _open_dir(name: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:  # a mode the cell set (root ignores it; a same-uid pool may not)
        if dir_fd is None:
            os.chmod(name, 0o700)
        else:  # O_NOFOLLOW refused no link above, so `name` is a directory
            os.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _remove(path: str) -> None:
    cur = _open_dir(path, None)
    names: list[str] = []  # the way down from `path`, one name per level
    try:
        while True:
            sub = _clear_files(cur)
            if sub is not None:  # go down one level
                nxt = _open_dir(sub, cur)
                os.close(cur)
                cur = nxt
                names.append(sub)
                continue
            if not names:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=cur)  # up: the emptied dir goes
            os.close(cur)
            cur = parent
            os.rmdir(names.pop(), dir_fd=cur)
    finally:
        os.close(cur)
    os.rmdir(path)


def _clear_files(fd: int) -> str | None:
    """Unlink every non-directory in the directory `fd`; the name of a subdirectory, if any."""
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(mode):
                return entry.name
            os.unlink(entry.name, dir_fd=fd)
    return None
