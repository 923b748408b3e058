"""The NVIDIA backend: NCCL, flash-attn 2 (sdpa without it), Triton kernels, the vLLM engine."""

from __future__ import annotations

import logging
import os

import torch

from aster.backend import Backend, Capabilities
from aster.backends.common import has_module
from aster.backends.cpu.attention import register
from aster.backends.cuda import probes

log = logging.getLogger("aster")
_VARLEN_LOGGED = False  # the per-sequence sdpa fallback is logged once per process

# Dense (no sparsity) peak tensor-core FLOP/s per GPU from NVIDIA's data sheets, for MFU.
# Keys are matched as substrings of torch.cuda.get_device_name(), most specific first.
PEAK_BF16_FLOPS = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM / HBM3
    ("H800", 989.4e12),
    ("H20", 148.0e12),
    ("A100", 312.0e12),
    ("A800", 312.0e12),
    ("L40S", 362.0e12),
    ("A10G", 70.0e12),
)


def peak_bf16_flops_for(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak for a GPU name, or None when it is not in the table."""
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


class CUDABackend(Backend):
    name = "cuda"
    device_type = "cuda"
    dist_backend = "nccl"
    default_kernel_impl = "triton"
    default_engine = "vllm"
    install_hint = ("no usable NVIDIA GPU (torch.cuda.is_available() is False): install a CUDA "
                    "build of torch with pip install 'aster[cuda]' (bash scripts/install.sh "
                    "cuda), check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu")

    def __init__(self, kernel_impl: str | None = None, engine: str | None = None):
        caps = self.detect_capabilities()
        # Without a working vllm or triton, fall back (stated in describe() and the log)
        # instead of failing at start-up; an explicit request still errors through require().
        if engine in (None, "auto") and not caps.vllm:
            log.info("rollout engine: hf (%s)", self._probe(probes.vllm_probe).reason)
            engine = "hf"
        if kernel_impl in (None, "auto") and not caps.triton_kernels:
            kernel_impl = "chunked"
        super().__init__(kernel_impl=kernel_impl, engine=engine)

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available() and torch.cuda.device_count() > 0

    def detect_capabilities(self) -> Capabilities:
        # flash-attn and vLLM are probed (import + one tiny op on the GPU): a wheel built for
        # another torch or GPU turns its feature off with a logged reason instead of crashing.
        usable = self.is_available()
        flash = self._probe(probes.flash_attn_probe)
        vllm = self._probe(probes.vllm_probe)
        return Capabilities(
            bf16=usable and torch.cuda.is_bf16_supported(),
            flash_attention=flash.ok,
            packed_attention=usable,  # flash-attn's varlen, else per-sequence sdpa
            vllm=vllm.ok,
            sleep_mode=vllm.ok,
            triton_kernels=has_module("triton"),
            fused_model_ops=False,
        )

    def _probe(self, probe) -> probes.Probe:
        if not self.is_available():
            return probes.Probe(False, "no usable NVIDIA GPU")
        # This rank's GPU (LOCAL_RANK under torchrun), so 8 ranks do not all probe GPU 0.
        local = int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count())
        return probe(f"cuda:{local}")

    def capability_hint(self, capability: str) -> str:
        why = {"vllm": probes.vllm_probe, "sleep_mode": probes.vllm_probe,
               "flash_attention": probes.flash_attn_probe}
        hints = {"vllm": "pip install 'aster[cuda]' (vllm) or set rollout.engine=hf",
                 "sleep_mode": "pip install 'aster[cuda]' (vllm) or set rollout.engine=hf",
                 "flash_attention": "bash scripts/install.sh cuda (flash-attn)",
                 "packed_attention": "a usable NVIDIA GPU (packed rows run flash-attn's "
                                     "varlen, else per-sequence sdpa)",
                 "triton_kernels": "pip install triton or set backend.kernel_impl=chunked"}
        hint = hints.get(capability, super().capability_hint(capability))
        if capability in why:
            reason = self._probe(why[capability]).reason
            hint = f"{reason}; {hint}" if reason else hint
        return hint

    def attn_implementation(self, packed: bool = False) -> str:
        """flash-attn 2 where it works. Without it, packed rows (training models) get one
        causal sdpa call per sequence (aster.backends.cpu.attention: plain torch, any
        device; torch's CUDA sdpa runs its flash / memory-efficient kernels under
        is_causal): transformers' sdpa would build a dense [T, T] block-diagonal mask for a
        packed row, 4 GiB held and 8-12 GiB per layer call at 65,536 tokens, and attend
        over all T^2 positions instead of sum(L_i^2) / 2."""
        if self.capabilities.flash_attention:
            return "flash_attention_2"
        if not packed:
            return "sdpa"
        global _VARLEN_LOGGED
        if not _VARLEN_LOGGED:
            log.info("attention: flash-attn unavailable (%s); packed rows use per-sequence "
                     "causal sdpa, never a dense [T, T] mask",
                     self._probe(probes.flash_attn_probe).reason or "not installed")
            _VARLEN_LOGGED = True
        return register(decode=False)

    def engine_options(self) -> dict:
        if self.engine != "vllm":
            return {}
        return {"enable_sleep_mode": self.capabilities.sleep_mode, "enable_prefix_caching": True}

    def determinism_env(self) -> dict[str, str]:
        # cuBLAS needs a fixed workspace for deterministic GEMMs; NCCL's algorithm choice and
        # flash-attn's backward split must be pinned for run-to-run equal all-reduces/grads.
        return {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "NCCL_ALGO": "Ring",
                "FLASH_ATTENTION_DETERMINISTIC": "1"}

    def set_deterministic(self, seed: int) -> None:
        super().set_deterministic(seed)
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False

    def peak_flops(self, dtype: torch.dtype = torch.bfloat16) -> float | None:
        if not self.is_available():
            return None
        peak = peak_bf16_flops_for(torch.cuda.get_device_name(self.dist.local_rank))
        if peak is None or dtype in (torch.bfloat16, torch.float16):
            return peak
        return peak / 2 if dtype == torch.float32 else None  # tf32 tensor cores: half of bf16
