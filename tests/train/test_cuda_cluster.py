"""On an NVIDIA GPU (cuda marker; skipped elsewhere): a one-rank NCCL process group built by
aster's backend seam serves every tensor the trainer passes, and bf16 SFT and GRPO steps on
the GPU keep fp32 master weights under none (autocast), FSDP2 (MixedPrecisionPolicy) and, when
DeepSpeed is installed, ZeRO-2's bf16 mode.

    pytest -m cuda -s tests/train/test_cuda_cluster.py     # -s prints the figures

~1 minute on one H100 (most of it model and DeepSpeed start-up)."""

import importlib.util
import json
import time

import pytest
import torch

from tests.train._dist_worker import conversations, trajectories

pytestmark = pytest.mark.cuda

BF16_SFT = ["model.dtype=bfloat16", "sft.epochs=1", "sft.global_batch_size=4",
            "sft.micro_batch_size=2", "sft.warmup_ratio=0", "sft.lr=1e-6",
            "logging.tensorboard=false", "rl.lr=1e-6", "rl.group_size=2",
            "rl.prompts_per_step=4", "rl.mini_batch_prompts=2",
            "rl.max_tokens_per_micro_batch=64"]


@pytest.fixture(scope="module")
def nccl_backend():
    """The cuda backend with a one-rank process group from its own backend string."""
    import torch.distributed as dist

    from aster.backend import select_backend

    backend = select_backend("cuda", engine="hf")
    spec = backend.process_group_backend()
    assert spec == "cpu:gloo,cuda:nccl"
    backend.set_device()
    if dist.is_initialized():  # a group an earlier test left behind (tests run one at a time)
        dist.destroy_process_group()
    dist.init_process_group(spec, store=dist.HashStore(), rank=0, world_size=1)
    yield backend
    dist.destroy_process_group()


def test_nccl_group_serves_cpu_counters_device_tensors_and_objects(nccl_backend):
    import torch.distributed as dist

    counts = torch.tensor([3.0, 4.0], dtype=torch.float64)  # the trainers' token counts
    dist.all_reduce(counts)
    device = torch.ones(4, device="cuda", dtype=torch.bfloat16)
    dist.all_reduce(device)
    dist.all_reduce(device, op=dist.ReduceOp.AVG)  # NCCL has AVG for device tensors
    box = [{"run_dir": "x", "error": None}]
    dist.broadcast_object_list(box, src=0)  # the run-directory verdict
    gathered = [None]
    dist.all_gather_object(gathered, {"rng": 1})  # checkpoint RNG states, per-prompt records
    dist.barrier()
    assert counts.tolist() == [3.0, 4.0] and device.float().sum().item() == 4.0
    assert box[0]["run_dir"] == "x" and gathered == [{"rng": 1}]
    print(f"\nprocess group {nccl_backend.process_group_backend()!r}: CPU float64, cuda bf16, "
          "AVG, objects and barrier all served")


def _context(backend, model_dir, run_dir, strategy: str):
    from aster.config import load_config
    from aster.metrics import MetricsWriter
    from aster.train.pipeline import make_context

    zero = ["distributed.zero_stage=2"] if strategy == "deepspeed" else []
    cfg = load_config(None, [*BF16_SFT, f"distributed.strategy={strategy}", *zero])
    return make_context(cfg, backend, str(model_dir), run_dir,
                        MetricsWriter(run_dir, tensorboard=False))


def _masters(ctx) -> dict:
    from tests.train._dist_worker import master_weights

    return {k: v.detach().float().cpu() for k, v in master_weights(ctx).items()}


@pytest.mark.parametrize("strategy", ["none", "deepspeed"])
def test_bf16_sft_and_grpo_steps_keep_fp32_masters(nccl_backend, tiny_model_dir, tmp_path,
                                                   strategy):
    from aster.metrics import read_metrics
    from aster.train.rl import learn_from_rollouts, start_rl_stage
    from aster.train.rollouts import engine_weights
    from aster.train.sft import encode_dataset, sft_total_steps, start_sft_stage, train_sft

    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    ctx = _context(nccl_backend, tiny_model_dir, tmp_path / "sft", strategy)
    assert ctx.compute_dtype == torch.bfloat16
    data, _ = encode_dataset(ctx.tokenizer, conversations(8), 1024)
    t0 = time.perf_counter()
    ctx = start_sft_stage(ctx, sft_total_steps(ctx.cfg.sft, len(data)))  # DeepSpeed: the engine
    train_sft(ctx, data)  # 2 steps
    sft_s = time.perf_counter() - t0
    assert {v.dtype for v in _masters(ctx).values()} == {torch.float32}
    assert {v.dtype for v in engine_weights(ctx).values()} == {torch.bfloat16}
    ctx = _context(nccl_backend, tiny_model_dir, tmp_path / "rl", strategy)  # a stage's own
    ctx = start_rl_stage(ctx, "rl", ctx.cfg.rl.stage1, 10, weight_decay=0.0, warmup_steps=0)
    before = _masters(ctx)
    trajs = trajectories(ctx.hf_model.config.vocab_size)
    t0 = time.perf_counter()
    # advantages, the plan (packed micro batches: flash-attn varlen where it is installed), old
    # log-probs, 2 updates through the fused GRPO head
    stats = learn_from_rollouts(ctx, trajs, "rl", None)["metrics"]
    torch.cuda.synchronize()
    rl_s = time.perf_counter() - t0
    after = _masters(ctx)
    moved = sum(int((after[k] != before[k]).sum()) for k in after)
    total = sum(v.numel() for v in after.values())
    sft = [m for m in read_metrics(tmp_path / "sft") if m["stage"] == "sft"]
    assert len(sft) == 2 and all(torch.isfinite(torch.tensor(m["loss"])) for m in sft)
    assert torch.isfinite(torch.tensor(stats["loss"])) and stats["grad_norm"] > 0
    assert moved / total > 0.5  # lr 1e-6 on fp32 masters: most elements move
    print(f"\n{strategy}: bf16 SFT 2 steps {sft_s:.2f}s, losses "
          f"{[round(m['loss'], 4) for m in sft]}; GRPO update (2 mini batches) {rl_s:.2f}s, "
          f"loss {stats['loss']:.5f} grad_norm {stats['grad_norm']:.4f}; fp32 master "
          f"elements moved at lr 1e-6: {moved / total:.1%}; peak "
          f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB "
          + json.dumps({"device": torch.cuda.get_device_name()}))


def test_fsdp2_mixed_precision_on_one_rank(nccl_backend, tiny_model_dir):
    """fully_shard with MixedPrecisionPolicy(bf16, reduce fp32) over fp32 shards (the one-rank
    mesh build_strategy skips, built here through the same function)."""
    from torch.distributed.tensor import DTensor

    from aster.algo import PolicyForward, build_micro_batch, policy_logprobs
    from aster.config import load_config
    from aster.train.common import load_policy
    from aster.train.strategy.fsdp2 import shard

    cfg = load_config(None, BF16_SFT)
    model, _ = load_policy(str(tiny_model_dir), cfg.model, nccl_backend)
    policy = shard(PolicyForward(model, nccl_backend.kernel_impl, torch.bfloat16),
                   nccl_backend, cfg.distributed, torch.bfloat16)
    params = list(policy.parameters())
    assert all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in params)
    mb = build_micro_batch([[5, 6, 7]], [[8, 9, 10, 11]], [[1, 1, 0, 1]], device="cuda")
    logp = policy_logprobs(policy, mb, 1.0)
    assert logp.dtype == torch.float32
    (-logp.sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
    print(f"\nfsdp2 on one rank: fp32 sharded parameters, logp {logp.sum().item():.4f}, "
          "fp32 gradients")
