"""Does the package set `bash scripts/install.sh cuda|ascend` installs resolve, to one torch?

Run through `bash scripts/install.sh --check cuda|ascend` (which exports the set). Metadata
only: pip --dry-run --report (wheels' metadata by HTTP range requests where the index serves
no separate metadata files; the few sdists in the set build metadata only). Against PyPI alone,
with this machine's pip configuration set aside.

- cuda: the whole set resolves in one pip call on this machine (Linux x86_64: PyPI's torch
  wheels are the CUDA builds), and every torch pin in it names the torch install.sh installs.
- ascend: the set cannot resolve from PyPI alone (x86_64 torch-npu pins torch==X+cpu from the
  PyTorch CPU index; triton-ascend 3.2.2 is on Huawei's index), so the pins are checked
  against each other from their metadata (Ascend hosts are aarch64: those wheels' metadata):
  one torch across torch-npu, vllm-ascend and aster's range, the torch-npu vllm-ascend pins,
  a transformers that vllm-ascend, vllm (built without CUDA) and aster all accept.

Exit 0: consistent (or PyPI unreachable/slow: a note, not a failure); 1: the set does not
resolve or names two torches; 2: usage.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

PYPI = "https://pypi.org/simple"
NETWORK = re.compile(r"Retrying \(Retry\(|NewConnectionError|ConnectTimeout|Read ?timed out|"
                     r"ReadTimeoutError|Temporary failure in name resolution|Network is "
                     r"unreachable|Connection (refused|reset|aborted)|ProxyError|SSLError|"
                     r"HTTP error 5\d\d|Max retries exceeded")
AARCH64 = [f"manylinux_2_{n}_aarch64" for n in (17, 24, 26, 27, 28, 31, 34, 35)]
TIMEOUT_S = int(os.environ.get("ASTER_CHECK_TIMEOUT_S", "900"))


class Unreachable(Exception):
    """PyPI could not be reached in time: not the set's fault."""


def _pip_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's indexes, find-links, constraints
    return env


def _fast_deps() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--help"],
                         capture_output=True, text=True).stdout
    return ["--use-feature=fast-deps"] if "fast-deps" in out else []


def pip_report(args: list[str], name: str, env: dict | None = None) -> list[dict]:
    """`pip install --dry-run --ignore-installed --report` of `args`: the would-install items."""
    report = Path(os.environ.get("ASTER_CHECK_DIR", ".")) / f"{name}.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
           "--quiet", "--report", str(report), "--index-url", PYPI, *_fast_deps(), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                              env={**_pip_env(), **(env or {})})
    except subprocess.TimeoutExpired:
        raise Unreachable(f"pip did not finish in {TIMEOUT_S} s") from None
    if proc.returncode != 0:
        text = proc.stdout + proc.stderr
        if NETWORK.search(text):
            raise Unreachable(NETWORK.search(text).group(0))
        tail = [ln for ln in text.splitlines() if ln.strip() and "fast-deps" not in ln][-12:]
        raise SystemExit("the set does not resolve:\n  " + "\n  ".join(tail))
    return json.loads(report.read_text())["install"]


def _meta(items: list[dict]) -> dict[str, dict]:
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"] for i in items}


def _pins(meta: dict, name: str, extra: str = "") -> list[Requirement]:
    """`meta`'s requirements on `name` (those of `extra` too, other extras left out)."""
    reqs = []
    for line in meta.get("requires_dist") or []:
        req = Requirement(line)
        if req.name.lower().replace("_", "-") != name:
            continue
        if req.marker and "extra" in str(req.marker) and not req.marker.evaluate({"extra": extra}):
            continue
        reqs.append(req)
    return reqs


def _exact(req: Requirement) -> Version | None:
    specs = [s for s in req.specifier if s.operator == "=="]
    return Version(specs[0].version.split("+")[0]) if specs else None


def cuda_problems(meta: dict[str, dict], torch_v: str) -> list[str]:
    """What is wrong with a resolved set (name -> metadata) that should hold torch `torch_v`."""
    problems = []
    if Version(meta["torch"]["version"]) != Version(torch_v):
        problems.append(f"resolved torch {meta['torch']['version']}, install.sh pins {torch_v}")
    for name, m in meta.items():
        for req in _pins(m, "torch"):
            pinned = _exact(req)
            if pinned is not None and pinned != Version(torch_v):
                problems.append(f"{name} {m['version']} pins {req}, the set has torch {torch_v}")
    return problems


def check_cuda() -> list[str]:
    torch_v = os.environ["CUDA_TORCH"]
    items = pip_report(["--no-build-isolation", f"torch=={torch_v}", os.environ["CUDA_EXTRA"],
                        os.environ["FLASH_ATTN"]], "cuda",
                       env={"FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE"})  # metadata, no nvcc
    meta = _meta(items)
    problems = cuda_problems(meta, torch_v)
    if problems:
        raise SystemExit("; ".join(problems))
    keys = ("torch", "vllm", "flash-attn", "deepspeed", "triton", "transformers", "aster")
    return [f"{k} {meta[k]['version']}" for k in keys if k in meta] + [f"({len(items)} packages)"]


def check_ascend() -> list[str]:
    torch_v = Version(os.environ["ASCEND_TORCH"])
    aster = _meta(pip_report(["--no-deps", "--no-build-isolation", "."], "aster"))["aster"]
    pins = {r.name.lower(): r for r in (Requirement(x) for x in aster["requires_dist"])
            if r.marker and r.marker.evaluate({"extra": "ascend"}) and
            not r.marker.evaluate({"extra": ""})}
    wheels = [f"torch=={torch_v}", str(pins["torch-npu"]).split(";")[0],
              str(pins["vllm-ascend"]).split(";")[0]]
    platforms = [a for p in AARCH64 for a in ("--platform", p)]
    meta = _meta(pip_report(["--no-deps", "--only-binary=:all:", "--implementation", "cp",
                             "--python-version", "3.11", *platforms, "--target",
                             os.environ.get("ASTER_CHECK_DIR", ".") + "/t", *wheels], "ascend"))
    vllm = _meta(pip_report(["--no-deps", "--no-build-isolation", "--no-binary", "vllm",
                             f"vllm=={os.environ['ASCEND_VLLM']}"], "vllm",
                            env={"VLLM_TARGET_DEVICE": "empty",
                                 "VLLM_VERSION_OVERRIDE": os.environ["ASCEND_VLLM"]}))["vllm"]
    problems = ascend_problems(aster, meta, vllm, torch_v)
    if problems:
        raise SystemExit("; ".join(problems))
    tf = _exact(_pins(meta["vllm-ascend"], "transformers")[0])
    triton = [str(r) for r in _pins(meta["vllm-ascend"], "triton-ascend")]
    return [f"torch {torch_v}", f"torch-npu {meta['torch-npu']['version']}",
            f"vllm {vllm['version']} (VLLM_TARGET_DEVICE=empty)",
            f"vllm-ascend {meta['vllm-ascend']['version']}", f"transformers {tf}",
            f"{', '.join(triton) or 'no triton-ascend'} (Huawei's index: not checked here)"]


def ascend_problems(aster: dict, meta: dict[str, dict], vllm: dict, torch_v: Version) -> list:
    """Pins that disagree across aster, torch-npu, vllm-ascend and vllm (built without CUDA)."""
    problems = []
    for name in ("torch-npu", "vllm-ascend"):
        for req in _pins(meta[name], "torch"):
            if _exact(req) != torch_v:
                problems.append(f"{name} {meta[name]['version']} pins {req}, not torch {torch_v}")
    torch_spec = _pins(aster, "torch")[0].specifier
    if not torch_spec.contains(str(torch_v)):
        problems.append(f"aster's torch{torch_spec} excludes torch {torch_v}")
    npu_pin = _exact(_pins(meta["vllm-ascend"], "torch-npu")[0])
    if npu_pin != Version(meta["torch-npu"]["version"]):
        problems.append(f"vllm-ascend pins torch-npu {npu_pin}, the set has "
                        f"{meta['torch-npu']['version']}")
    if _pins(vllm, "torch"):
        problems.append(f"vllm {vllm['version']} (no CUDA) still pins {_pins(vllm, 'torch')[0]}")
    tf = _exact(_pins(meta["vllm-ascend"], "transformers")[0])
    for who, m in (("aster", aster), (f"vllm {vllm['version']}", vllm)):
        for req in _pins(m, "transformers"):
            if tf is not None and not req.specifier.contains(str(tf)):
                problems.append(f"vllm-ascend pins transformers {tf}, {who} needs {req}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("cuda", "ascend"):
        print("usage: bash scripts/install.sh --check cuda|ascend", file=sys.stderr)
        return 2
    try:
        found = check_cuda() if argv[0] == "cuda" else check_ascend()
    except Unreachable as exc:
        print(f"install set {argv[0]}: NOT CHECKED, PyPI unreachable or slow ({exc})")
        return 0
    except SystemExit as exc:
        print(f"install set {argv[0]}: FAILED: {exc}")
        return 1
    print(f"install set {argv[0]}: ok, one torch: " + ", ".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
