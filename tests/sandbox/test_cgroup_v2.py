"""The per-worker pids cgroups under cgroup v2's delegation rule.

This box mounts cgroup v1, where every group has every controller of its hierarchy; the GPU
machines (and most current distributions) mount v2, where a group's children get the pids
controller only when the group enables it in its cgroup.subtree_control. There the first
`aster train` died at its first sandbox session (PermissionError writing a worker group's
pids.max), so these tests run the pool's cgroup code on a stand-in v2 tree that answers as
cgroupfs does: EACCES for an interface file a group lacks.
"""

from __future__ import annotations

import errno
import pathlib

import pytest

from aster.sandbox import SandboxConfig, SandboxPool, _procs


class FakeCgroup2:
    """A directory tree with cgroup v2's rules for the files aster touches. A new group gets
    cgroup.procs, cgroup.subtree_control and, when its parent's subtree_control enables pids
    (memory), pids.max (memory.max, memory.swap.max, memory.oom.group); writing an interface file the group lacks raises EACCES; enabling a controller
    the tree does not have (`controllers`) raises ENOENT, as the kernel answers; rmdir of a
    group without processes takes its interface files with it."""

    FILES = {"pids": ("pids.max",), "memory": ("memory.max", "memory.swap.max",
                                               "memory.oom.group")}

    def __init__(self, root: pathlib.Path, controllers: tuple[str, ...] = ("pids",)):
        self.root, self.controllers = root, controllers
        # the mount's own root delegates
        (root / "cgroup.subtree_control").write_text("pids memory")

    def inside(self, path: pathlib.Path) -> bool:
        return pathlib.Path(path).is_relative_to(self.root)

    def install(self, monkeypatch) -> None:
        real_mkdir, real_write = pathlib.Path.mkdir, pathlib.Path.write_text
        fake = self

        def mkdir(path, *args, **kwargs):
            existed = path.exists()
            real_mkdir(path, *args, **kwargs)
            if fake.inside(path) and not existed:
                real_write(path / "cgroup.procs", "")
                real_write(path / "cgroup.subtree_control", "")
                parent_ctl = (path.parent / "cgroup.subtree_control").read_text().split()
                for controller in parent_ctl:
                    for name in fake.FILES.get(controller, ()):
                        real_write(path / name, "max")

        def write_text(path, data, *args, **kwargs):
            interface = ("cgroup.subtree_control", *fake.FILES["pids"], *fake.FILES["memory"])
            if fake.inside(path) and path.name in interface:
                if not path.exists():
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                if path.name == "cgroup.subtree_control":
                    wanted = [c.lstrip("+") for c in data.split() if c.startswith("+")]
                    missing = [c for c in wanted if c not in fake.controllers]
                    if missing:
                        raise FileNotFoundError(errno.ENOENT, "No such file or directory",
                                                str(path))
                    data = " ".join(set(wanted) | set(path.read_text().split()))
            return real_write(path, data, *args, **kwargs)

        real_rmdir = _procs.os.rmdir

        def rmdir(path, *args, **kwargs):
            if fake.inside(path):  # cgroupfs removes an empty group with its interface files
                for name in ("cgroup.procs", "cgroup.subtree_control", *fake.FILES["pids"],
                             *fake.FILES["memory"]):
                    (pathlib.Path(path) / name).unlink(missing_ok=True)
            return real_rmdir(path, *args, **kwargs)

        monkeypatch.setattr(_procs.os, "rmdir", rmdir)
        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
        monkeypatch.setattr(pathlib.Path, "write_text", write_text)
        monkeypatch.setattr(_procs, "_pids_cgroup_mount", lambda: self.root)
        monkeypatch.setattr(_procs, "_memory_cgroup_mount", lambda: self.root)


def test_worker_groups_get_a_pids_controller_under_cgroup_v2(tmp_path, monkeypatch):
    FakeCgroup2(tmp_path, controllers=("pids",)).install(monkeypatch)
    tree = _procs.CgroupTree.create()
    assert tree is not None
    assert (tree.root / "cgroup.subtree_control").read_text().split() == ["pids"]
    group = pathlib.Path(tree.new_group(5))
    assert (group / "pids.max").read_text() == "5"
    assert [p.name for p in tree.root.iterdir() if p.is_dir()] == [group.name]  # probe removed


def test_worker_groups_get_memory_max_and_no_swap_under_cgroup_v2(tmp_path, monkeypatch):
    """One group per session holds both controllers: memory.max is the whole session's
    memory_mb, swap is off and an OOM kills the whole session, not only its largest process."""
    FakeCgroup2(tmp_path, controllers=("pids", "memory")).install(monkeypatch)
    tree = _procs.CgroupTree.create(300 << 20)
    assert tree is not None and tree.controllers == {"pids", "memory"} and len(tree.dirs) == 1
    group = pathlib.Path(tree.new_group(5))
    assert (group / "pids.max").read_text() == "5"
    assert (group / "memory.max").read_text() == str(300 << 20)
    assert (group / "memory.swap.max").read_text() == "0"
    assert (group / "memory.oom.group").read_text() == "1"
    assert tree.siblings(str(group)) == []


def test_no_pids_controller_to_delegate_means_no_cgroups_and_nothing_left(tmp_path,
                                                                          monkeypatch):
    FakeCgroup2(tmp_path, controllers=()).install(monkeypatch)
    assert _procs.CgroupTree.create() is None
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


@pytest.mark.parametrize("controllers", [("pids", "memory"), ("pids",), ()],
                         ids=["delegated", "pids-only", "no-controller"])
def test_pool_sessions_run_on_cgroup_v2_and_say_what_is_in_force(tmp_path, monkeypatch,
                                                                 controllers):
    """The pool opens sessions either way; without a delegable pids controller it reports the
    process limit as not in force (and require_confinement would refuse) instead of dying."""
    FakeCgroup2(tmp_path, controllers=controllers).install(monkeypatch)
    cfg = SandboxConfig(timeout_s=10.0, max_sessions=2, spare_workers=0)
    with SandboxPool(cfg) as pool:
        with pool.session() as session:
            result = session.run("print(6 * 7)")
        assert result.status == "ok" and result.output.strip() == "42"
        in_force = {name: p.in_force for name, p in pool.protections.items()}
    assert in_force["process_limit"] is ("pids" in controllers)
    assert in_force["memory_limit"] is ("memory" in controllers)
