"""The Ascend backend: HCCL, torch_npu (imported lazily, only here), the NPU fusion attention
through transformers' integration, `chunked` kernels (triton-ascend opt-in), vllm-ascend."""

from __future__ import annotations

import logging

import torch

from aster.backend import Backend, Capabilities
from aster.backends.ascend import probes, runtime
from aster.backends.ascend.fused_ops import apply_fused_qwen3_ops
from aster.errors import DeviceUnavailableError

log = logging.getLogger("aster")

# Vendor peak dense fp16/bf16 FLOP/s per chip, for MFU; matched as substrings of the SoC name
# torch_npu reports (torch.npu.get_device_name), most specific first.
PEAK_BF16_FLOPS = (
    ("910B1", 414.0e12),
    ("910B2", 376.0e12),
    ("910B3", 313.0e12),
    ("910B4", 280.0e12),
    ("910_93", 376.0e12),  # Atlas A3 (910C), per die
    ("910", 256.0e12),  # first-generation Ascend 910 (the ASTER paper's platform)
)


class AscendBackend(Backend):
    name = "npu"
    device_type = "npu"
    dist_backend = "hccl"
    # The Triton tiles sized for GPUs overflow the 910B unified buffer; the portable chunked
    # kernels are the default and triton-ascend is an opt-in (backend.kernel_impl=triton).
    default_kernel_impl = "chunked"
    default_engine = "vllm"
    install_hint = runtime.INSTALL_HINT

    def __init__(self, kernel_impl: str | None = None, engine: str | None = None):
        self.torch_npu, error = runtime.import_torch_npu()
        if self.torch_npu is None:
            raise DeviceUnavailableError(f"--device npu: {error}")
        if engine in (None, "auto") and not probes.vllm_ascend_probe().ok:
            log.info("rollout engine: hf (%s)", probes.vllm_ascend_probe().reason)
            engine = "hf"
        super().__init__(kernel_impl=kernel_impl, engine=engine)

    @classmethod
    def is_available(cls) -> bool:
        module, _ = runtime.import_torch_npu()
        return module is not None and runtime.npu_device_count(module) > 0

    @classmethod
    def unavailable_reason(cls) -> str:
        module, error = runtime.import_torch_npu()
        if module is None:
            return f"--device npu: {error}"
        return ("--device npu: torch_npu imported but sees no NPU; check npu-smi info, "
                "ASCEND_RT_VISIBLE_DEVICES and that the CANN driver matches, or use --device cpu")

    def detect_capabilities(self) -> Capabilities:
        return Capabilities(
            bf16=True,  # 910B and later; the first-generation 910 has fp16 only
            flash_attention=hasattr(self.torch_npu, "npu_fusion_attention"),
            packed_attention=hasattr(self.torch_npu, "npu_fusion_attention"),
            vllm=probes.vllm_ascend_probe().ok,
            sleep_mode=probes.vllm_ascend_probe().ok,
            triton_kernels=probes.triton_ascend_probe().ok,
            fused_model_ops=all(hasattr(self.torch_npu, op) for op in
                                ("npu_rms_norm", "npu_rotary_mul", "npu_swiglu")),
        )

    def capability_hint(self, capability: str) -> str:
        hints = {"vllm": f"{probes.vllm_ascend_probe().reason}; bash scripts/install.sh "
                         "ascend (vllm + vllm-ascend) or set rollout.engine=hf",
                 "triton_kernels": f"{probes.triton_ascend_probe().reason}; pip install "
                                   "triton-ascend ('aster[triton-ascend]') or keep "
                                   "backend.kernel_impl=chunked",
                 "fused_model_ops": "this torch_npu lacks npu_rms_norm/npu_rotary_mul/"
                                    "npu_swiglu; upgrade torch-npu or set model.fused_ops=false"}
        return hints.get(capability, super().capability_hint(capability))

    def attn_implementation(self, packed: bool = False) -> str:
        # transformers routes flash_attention_2 to npu_fusion_attention when torch_npu is present
        return "flash_attention_2" if self.capabilities.flash_attention else "sdpa"

    def prepare_model(self, model: torch.nn.Module, fused_ops: bool = False) -> torch.nn.Module:
        super().prepare_model(model, fused_ops)
        if fused_ops:
            apply_fused_qwen3_ops(model, self.torch_npu)
        return model

    def engine_options(self) -> dict:
        if self.engine != "vllm":
            return {}
        # Sleep mode frees NPU memory for the colocated trainer. Eager mode: graph capture
        # must be redone after every weight update otherwise. RL mode (rl_config) only where
        # the installed vllm-ascend reads it (no release up to 0.25 does; engine_env() turns
        # FRACTAL_NZ off on every release).
        options = {"enable_sleep_mode": True, "enforce_eager": True}
        if probes.reads_rl_config():
            options["additional_config"] = {"rl_config": {"enabled": True}}
        return options

    def engine_env(self) -> dict[str, str]:
        # FRACTAL_NZ weight layouts off: aster pushes checkpoint-format weights in place after
        # every optimizer step and they must land in the layout the kernels read (vllm-ascend's
        # own weight-update path refuses to run with NZ on).
        return {"VLLM_ASCEND_ENABLE_NZ": "0"} if self.engine == "vllm" else {}

    def determinism_env(self) -> dict[str, str]:
        return {"HCCL_DETERMINISTIC": "true",  # deterministic reduction order in HCCL
                "CLOSE_MATMUL_K_SHIFT": "1",  # no K-axis shifting in cube matmuls
                "ATB_MATMUL_SHUFFLE_K_ENABLE": "0",  # same for ATB's matmuls (vllm-ascend)
                "ATB_LLM_LCOC_ENABLE": "0"}  # no compute/comm overlap splitting

    def set_deterministic(self, seed: int) -> None:
        super().set_deterministic(seed)
        self.torch_npu.npu.manual_seed_all(seed)

    def peak_flops(self, dtype: torch.dtype = torch.bfloat16) -> float | None:
        name = str(self.torch_npu.npu.get_device_name(self.dist.local_rank))
        for key, flops in PEAK_BF16_FLOPS:
            if key in name:
                return flops if dtype in (torch.bfloat16, torch.float16) else None
        return None

    def set_device(self) -> None:
        self.torch_npu.npu.set_device(self.dist.local_rank)

    def synchronize(self) -> None:
        self.torch_npu.npu.synchronize()

    def memory_stats(self) -> dict[str, float]:
        npu, gib = self.torch_npu.npu, float(1 << 30)
        return {"mem_allocated_gib": npu.memory_allocated() / gib,
                "mem_reserved_gib": npu.memory_reserved() / gib,
                "mem_peak_gib": npu.max_memory_allocated() / gib}

    def empty_cache(self) -> None:
        self.torch_npu.npu.empty_cache()
