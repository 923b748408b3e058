"""NVIDIA GPUs: NCCL, flash-attn, Triton kernels, vLLM."""
