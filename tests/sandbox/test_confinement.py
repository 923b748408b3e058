"""Confinement: a session sees no secret of the trainer, none of its files, none of its processes.

The trainer here has a fake HF_TOKEN in its environment and an answers file in its working
directory, as a real RL run would. Each test checks the protection where `pool.protections`
says it is in force, and otherwise that the pool says so (never a silent skip).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from aster.sandbox import SandboxConfig, SandboxPool
from aster.sandbox._report import PROTECTIONS
from aster.sandbox.result import SandboxConfinementError

REPO = Path(__file__).resolve().parents[2]
TOKEN = "hf_FAKEtokenFORaster16xxxxxxxxxxxxxx"
ANSWER = "ground truth: 4242424242"
ALLOWED = {"PATH", "HOME", "TMPDIR", "PWD", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONHASHSEED",
           "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
           "VECLIB_MAXIMUM_THREADS", "ASTER_TEST_PASSED_ON"}
DENIED = ("FileNotFoundError", "PermissionError")


def _can_confine() -> bool:
    """Root with CAP_SYS_ADMIN (not a locked-down container): everything must be in force."""
    if os.geteuid() != 0:
        return False
    with open("/proc/self/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff"))
    return bool(eff & (1 << 21)) and shutil.which("cat") is not None


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """The trainer's working directory: an answers file in it, a token in the environment."""
    cwd = tmp_path_factory.mktemp("trainer")
    (cwd / "answers.jsonl").write_text(json.dumps({"answer": ANSWER}) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", TOKEN)
        mp.setenv("WANDB_API_KEY", TOKEN)
        mp.setenv("ASTER_TEST_PASSED_ON", "yes")
        mp.chdir(cwd)
        yield cwd


@pytest.fixture(scope="module")
def pool(trainer):
    """A pool started by that trainer (the zygote takes the environment and cwd of now)."""
    cfg = SandboxConfig(spare_workers=1, max_sessions=4, env=["ASTER_TEST_PASSED_ON"])
    p = SandboxPool(cfg)
    yield p
    p.close()


def _missing_is_reported(pool, name: str) -> bool:
    """True (after checking the report) when the protection is not in force here."""
    found = pool.protections[name]
    if found.in_force:
        return False
    line = next(x for x in pool.enforcement if x.startswith(f"{name}:"))
    assert "NOT in force" in line and len(line) > len(name) + 20, line
    assert not _can_confine(), f"root with CAP_SYS_ADMIN, yet {line}"
    return True


def test_every_protection_is_reported(pool):
    assert set(pool.protections) == set(PROTECTIONS)
    for name in PROTECTIONS:
        _missing_is_reported(pool, name)
    if _can_confine():
        assert pool.missing == [], pool.enforcement


def test_session_sees_no_secret(pool):
    with pool.session() as s:
        keys = json.loads(s.run("import os, json\nprint(json.dumps(sorted(os.environ)))").output)
        assert set(keys) <= ALLOWED and "HF_TOKEN" not in keys and "WANDB_API_KEY" not in keys
        assert s.run("os.environ['ASTER_TEST_PASSED_ON']").output == "'yes'\n"  # sandbox.env
        # nor in the initial environment of any process it can read (its own, its parent's)
        scan = s.run("hits = []\nfor d in os.listdir('/proc'):\n    try:\n"
                     "        hits += [d] if b'hf_FAKE' in open(f'/proc/{d}/environ', 'rb')"
                     ".read() else []\n    except OSError:\n        pass\nhits")
        assert scan.ok and scan.output == "[]\n", scan.output


def test_answers_file_cannot_be_read(pool, trainer):
    target = str(trainer / "answers.jsonl")
    with pool.session() as s:
        tries = {p: s.run(f"open({p!r}).read()").output
                 for p in (target, "answers.jsonl", "../answers.jsonl", f"{target}/../answers.jsonl")}
        found = s.run(f"import os\nos.path.exists({target!r}), os.path.exists({str(trainer)!r})")
    if _missing_is_reported(pool, "filesystem"):
        assert ANSWER in tries[target]  # the report is true: the file is readable
        return
    for path, output in tries.items():
        assert ANSWER not in output and any(e in output for e in DENIED), (path, output)
    assert found.output == "(False, False)\n"


def test_cannot_list_root_home_or_repository(pool):
    with pool.session() as s:
        outputs = {p: s.run(f"import os\nos.listdir({p!r})").output
                   for p in ("/root", "/home", str(REPO), str(REPO.parent))}
        readme = s.run(f"open({str(REPO / 'README.md')!r}).read()").output
        # the interpreter under them still works: a fresh import and a lazy submodule
        fresh = s.run("import statistics, zoneinfo, sympy.ntheory.factor_\n"
                      "statistics.median([3, 1, 2])")
    assert fresh.output == "2\n", fresh.output
    if _missing_is_reported(pool, "filesystem"):
        assert "# aster" in readme or "PermissionError" in readme
        return
    for path, output in outputs.items():
        if path == "/tmp":  # a checkout under /tmp (CI): /tmp is the session's own tmpfs,
            # holding only the 0111 directories on the way to a staged path (a venv there)
            from aster.sandbox._confine import view_paths

            on_the_way = {p.split("/")[2] for p in view_paths([]) if p.startswith("/tmp/")}
            assert set(ast.literal_eval(output.strip())) <= on_the_way, output
            continue
        assert any(e in output for e in DENIED), (path, output)
    assert any(e in readme for e in DENIED), readme


def test_sees_only_its_own_processes(pool):
    code = ("import os, subprocess, time\nchild = subprocess.Popen(['sleep', '30'])\n"
            "while not open(f'/proc/{child.pid}/cmdline').read():  # until its exec shows\n"
            "    time.sleep(0.01)\nseen = {}\n"
            "for d in filter(str.isdigit, os.listdir('/proc')):\n    try:\n"
            "        seen[int(d)] = open(f'/proc/{d}/cmdline', 'rb').read().split(b'\\0')[0]"
            ".decode()\n    except OSError:\n        pass\nchild.kill(); child.wait()\n"
            "sorted(seen.items())")
    with pool.session() as a, pool.session() as b:
        b.run("import time")
        if _missing_is_reported(pool, "processes"):
            if pool.protections["filesystem"].in_force:  # the report says: no /proc in the view
                assert a.run("import os\nos.path.exists('/proc/self')").output == "False\n"
            else:  # the report is true: the trainer is listed
                assert a.run(f"import os\nos.path.exists('/proc/{os.getpid()}')").output == \
                    "True\n"
            return
        r = a.run(code)
    assert r.ok, r.output
    seen = dict(ast.literal_eval(r.output))  # {pid: argv0} as the session sees them
    # the namespace's init, the worker, its sleep: not b's worker, not the trainer, nothing else
    names = sorted(os.path.basename(v) for v in seen.values())
    assert len(seen) == 3 and names == sorted(["aster-sandbox-init", "sleep",
                                                os.path.basename(sys.executable)]), seen


CAPS = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
head = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)()
assert libc.capget(head, data) == 0
bounding = [c for c in range(64) if libc.prctl(23, c, 0, 0, 0) == 1]  # PR_CAPBSET_READ
ambient = [c for c in range(64) if libc.prctl(47, 1, c, 0, 0) == 1]  # PR_CAP_AMBIENT_IS_SET
print(json.dumps({"eff": data[0] | data[3], "prm": data[1] | data[4], "inh": data[2] | data[5],
                  "bounding": bounding, "ambient": ambient, "uid": os.getuid(),
                  "no_new_privs": libc.prctl(39, 0, 0, 0, 0)}))  # PR_GET_NO_NEW_PRIVS
"""


def test_no_capabilities_and_own_uid(pool):
    with pool.session() as s:
        r = s.run(CAPS)
    assert r.ok, r.output
    got = json.loads(r.output)
    if not _missing_is_reported(pool, "capabilities"):
        assert got["eff"] == got["prm"] == got["inh"] == 0 and got["ambient"] == [], got
        assert got["no_new_privs"] == 1
        if os.geteuid() == 0:  # CAP_SETPCAP was there to empty the bounding set
            assert got["bounding"] == [], got
    if not _missing_is_reported(pool, "uid"):
        assert got["uid"] >= pool.config.uid_base


def test_private_tmp(pool):
    marker = f"/tmp/aster-16-{uuid.uuid4().hex}"
    with pool.session() as a, pool.session() as b:
        a.run(f"open({marker!r}, 'w').write('a')")
        seen = b.run(f"import os\nos.path.exists({marker!r})").output
    on_host = os.path.exists(marker)
    if on_host:
        os.remove(marker)
    if _missing_is_reported(pool, "filesystem"):
        return
    assert seen == "False\n" and not on_host


def test_read_only_paths(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "table.txt").write_text("42")
    (tmp_path / "private.txt").write_text("secret")
    cfg = SandboxConfig(spare_workers=0, read_only_paths=[str(shared)])
    with SandboxPool(cfg) as p, p.session() as s:
        read = s.run(f"open({str(shared / 'table.txt')!r}).read()").output
        write = s.run(f"open({str(shared / 'new.txt')!r}, 'w')").output
        other = s.run(f"open({str(tmp_path / 'private.txt')!r}).read()").output
        if _missing_is_reported(p, "filesystem"):
            return
    assert read == "'42'\n"
    assert "Read-only file system" in write or "PermissionError" in write, write
    assert not (shared / "new.txt").exists()
    assert "FileNotFoundError" in other, other


def test_trainer_directory_inside_a_read_only_path_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with SandboxPool(SandboxConfig(spare_workers=0, read_only_paths=[str(tmp_path)])) as p:
        fs = p.protections["filesystem"]
    assert not fs.in_force
    if p._zygote.report["confinement"]["view"]:
        assert f"working directory {tmp_path} is inside" in fs.detail, fs.detail


def test_read_only_path_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="sandbox.read_only_paths"):
        SandboxPool(SandboxConfig(read_only_paths=[str(tmp_path / "nope")]))


def test_missing_protections_logged_once(caplog):
    cfg = SandboxConfig(spare_workers=0, no_network=False, drop_privileges=False)
    with SandboxPool(cfg) as p, caplog.at_level(logging.INFO, logger="aster.test"):
        p.log_confinement(logging.getLogger("aster.test"))
        with p.session() as s:  # uid 0 when root, but without capabilities or /proc writes
            caps = json.loads(s.run(CAPS).output)
            sysctl = s.run("open('/proc/sys/kernel/hostname', 'w').write('pwned')").output
        if not _missing_is_reported(p, "capabilities"):
            assert caps["eff"] == caps["prm"] == 0 and caps["no_new_privs"] == 1, caps
        if not _missing_is_reported(p, "processes"):  # its own /proc, mounted read-only
            assert "Read-only file system" in sysctl, sysctl
    records = [r for r in caplog.records if r.name == "aster.test"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "network: NOT in force" in records[0].message
    assert "uid: NOT in force" in records[0].message
    assert "require_confinement" in records[0].message


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aster.cli", "sandbox", *args],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_require_confinement_refuses_in_one_line(tmp_path):
    cell = tmp_path / "cell.py"
    cell.write_text("print(6 * 7)\n")
    out = _cli("run", str(cell), "sandbox.require_confinement=true", "sandbox.no_network=false")
    assert out.returncode == 2 and out.stdout == "", out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "require_confinement" in lines[0] and "network" in lines[0], lines
    if _can_confine():  # and with everything in force it starts
        cfg = SandboxConfig(spare_workers=0, require_confinement=True)
        with SandboxPool(cfg) as p, p.session() as s:
            assert s.run("6 * 7").output == "42\n"


def test_require_confinement_before_the_run_directory(tmp_path):
    from aster.backend import select_backend
    from aster.config import load_config
    from aster.train.pipeline import run_pipeline

    cfg = load_config(None, ["sandbox.require_confinement=true", "sandbox.no_network=false"])
    with pytest.raises(SandboxConfinementError, match="network"):
        run_pipeline(cfg, select_backend("cpu"), output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


NON_ROOT = """
import json, os
from aster.sandbox import SandboxConfig, SandboxPool
from aster.sandbox.result import SandboxConfinementError
with SandboxPool(SandboxConfig(spare_workers=0)) as pool, pool.session() as s:
    env = s.run("import os\\nos.environ.get('HF_TOKEN'), os.getuid()").output
    report = {n: p.in_force for n, p in pool.protections.items()}
    print(json.dumps({"env": env, "report": report, "lines": pool.enforcement}))
try:
    SandboxPool(SandboxConfig(spare_workers=0, require_confinement=True))
except SandboxConfinementError as exc:
    print(json.dumps({"refused": str(exc)}))
"""


def test_non_root_fallback_is_reported():
    """The pool run by an unprivileged uid (via setpriv; it keeps only CAP_DAC_READ_SEARCH to
    read this interpreter under /root): what it cannot do is said, and the env still holds."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to become an unprivileged user; without root the "
                    "other tests in this file exercise the fallback themselves")
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
           "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--",
           sys.executable, "-c", NON_ROOT]
    env = dict(os.environ, HF_TOKEN=TOKEN, HOME="/tmp")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd="/tmp")
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert first["env"] == "(None, 65534)\n"  # the allow-list needs no privilege
    report = first["report"]
    assert report["environment"] and report["capabilities"]
    for name in ("filesystem", "processes", "uid", "process_limit", "network"):
        assert not report[name], name
        line = next(x for x in first["lines"] if x.startswith(f"{name}:"))
        assert "NOT in force" in line, line
    assert "not run as root" in next(x for x in first["lines"] if x.startswith("filesystem:"))
    assert "filesystem" in second["refused"] and "require_confinement" in second["refused"]
