"""Huawei Ascend NPUs: HCCL, torch_npu (imported lazily, only in this package), vllm-ascend."""
