"""Session uids that no two live sessions on a machine share, across pools and processes.

Each uid in [uid_base, uid_base + 2**20) has a lock file in one machine-wide directory; a pool
holds an flock on a uid's file for as long as that session lives (the kernel drops it if the
pool's process dies, whose sessions die with it: their pid namespaces' init reads the pool's
lifeline). Two pools on one machine (one per rank, or two runs) therefore never give the same
uid to two live sessions, so RLIMIT_NPROC (counted per uid) and signals cannot cross sessions.
Lock files are never unlinked: unlinking one that another pool has just opened would let two
pools lock two different files for the same uid.
"""

from __future__ import annotations

import fcntl
import os
import tempfile

SPAN = 1 << 20


def lock_dir() -> str:
    """/run/aster-sandbox-uids where /run is writable (root), else under the temp dir."""
    base = "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
    return os.path.join(base, "aster-sandbox-uids")


class UidAllocator:
    """acquire() -> (uid, lock fd); close the fd (``release``) once the session is dead."""

    def __init__(self, base: int, directory: str | None = None, span: int = SPAN):
        self.base, self.span = base, span
        self.dir = directory or lock_dir()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._cursor = 0
        self._freed: list[int] = []  # reused first: the directory keeps few files

    def acquire(self) -> tuple[int, int]:
        tried = 0
        while tried < self.span:
            if self._freed:
                uid = self._freed.pop()
            else:
                uid = self.base + self._cursor
                self._cursor = (self._cursor + 1) % self.span
                tried += 1
            fd = os.open(os.path.join(self.dir, str(uid)),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live session of another pool has it
                os.close(fd)
                continue
            return uid, fd
        raise OSError(f"no free session uid in [{self.base}, {self.base + self.span}): "
                      "every one is held by a live session")

    def release(self, uid: int, fd: int) -> None:
        os.close(fd)
        self._freed.append(uid)
