"""The NVIDIA backend: NCCL, flash-attn 2 (sdpa without it), Triton kernels, the vLLM engine."""

from __future__ import annotations

import torch

from aster.backend import Backend, Capabilities
from aster.backends.common import has_module

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
    visible_devices_env = "CUDA_VISIBLE_DEVICES"
    default_kernel_impl = "triton"
    default_engine = "vllm"
    install_hint = ("no usable NVIDIA GPU (torch.cuda.is_available() is False): install a CUDA "
                    "build of torch 2.13 and pip install 'aster[cuda]', check nvidia-smi and "
                    "CUDA_VISIBLE_DEVICES, or use --device cpu")

    def __init__(self, kernel_impl: str | None = None, engine: str | None = None):
        caps = self.detect_capabilities()
        # Without vllm or triton installed, fall back (stated in describe()) instead of failing
        # at start-up; an explicit request for them still errors through require().
        if engine in (None, "auto") and not caps.vllm:
            engine = "hf"
        if kernel_impl in (None, "auto") and not caps.triton_kernels:
            kernel_impl = "chunked"
        super().__init__(kernel_impl=kernel_impl, engine=engine)

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available() and torch.cuda.device_count() > 0

    def detect_capabilities(self) -> Capabilities:
        usable = self.is_available()
        return Capabilities(
            bf16=usable and torch.cuda.is_bf16_supported(),
            flash_attention=has_module("flash_attn"),
            packed_attention=has_module("flash_attn"),
            vllm=has_module("vllm"),
            sleep_mode=has_module("vllm"),
            triton_kernels=has_module("triton"),
            fused_model_ops=False,
            native_avg_all_reduce=True,
        )

    def capability_hint(self, capability: str) -> str:
        hints = {"vllm": "pip install 'aster[cuda]' (vllm) or set rollout.engine=hf",
                 "flash_attention": "pip install flash-attn (aster[cuda])",
                 "packed_attention": "pip install flash-attn (aster[cuda]) or set sft.packing=false",
                 "triton_kernels": "pip install triton or set backend.kernel_impl=chunked"}
        return hints.get(capability, super().capability_hint(capability))

    def attn_implementation(self, packed: bool = False) -> str:
        return "flash_attention_2" if self.capabilities.flash_attention else "sdpa"

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
