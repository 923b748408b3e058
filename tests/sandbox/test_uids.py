"""The machine-wide uid leases: two allocators on one lock directory (two pools, or two
processes: flock conflicts between open files, not only between processes) never hand out
one uid twice while it is held, and a freed uid is reused first."""

from __future__ import annotations

import os

import pytest

from aster.sandbox._uids import UidAllocator


def test_two_allocators_never_share_a_held_uid(tmp_path):
    first, second = UidAllocator(300_000, str(tmp_path)), UidAllocator(300_000, str(tmp_path))
    held = [first.acquire() for _ in range(3)]
    theirs = [second.acquire() for _ in range(3)]
    assert {u for u, _ in held}.isdisjoint(u for u, _ in theirs)
    uid, fd = held.pop(0)
    first.release(uid, fd)
    again = first.acquire()
    assert again[0] == uid  # the freed one first: the directory keeps few files
    assert len(os.listdir(tmp_path)) == 6
    for _uid, f in held + theirs + [again]:
        os.close(f)


def test_every_uid_held_is_a_one_line_error(tmp_path):
    a = UidAllocator(300_000, str(tmp_path), span=2)
    b = UidAllocator(300_000, str(tmp_path), span=2)
    held = [a.acquire(), a.acquire()]
    with pytest.raises(OSError, match="no free session uid"):
        b.acquire()
    for _uid, f in held:
        os.close(f)
