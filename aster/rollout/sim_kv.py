"""The stand-in engine's hardware: a step-time roofline and a block-granular KV cache.

`StepModel` prices one engine step (a forward over every scheduled token) by a roofline: the
larger of the bytes it must read over the memory bandwidth (all weights once, plus the KV of
every scheduled token's context) and its FLOPs over the achievable compute rate. The defaults
are Qwen3-4B in bf16 on one H100 SXM:

- Qwen3-4B's config.json: 36 layers, hidden 2560, intermediate 9728, 32 query heads and 8 KV
  heads of dim 128, vocab 151936 with tied embeddings -> 4.02e9 parameters, 8.04 GB of bf16
  weights; 3.63e9 of them in the per-token matmuls (the embedding is a lookup; the tied head
  runs only where a token is sampled); KV per token 2 (K, V) x 36 x 8 x 128 x 2 bytes =
  147,456 bytes; attention 4 x 36 x 32 x 128 = 589,824 FLOPs per (query, context) pair.
- The H100 SXM datasheet: 3.35 TB/s HBM3, 989 TFLOP/s dense bf16. Achieved fractions (80% of
  the bandwidth, 50% of the compute) are assumptions, stated as fields.

`BlockPool` follows vLLM 0.32's v1 KV cache manager (vllm/v1/core/block_pool.py,
kv_cache_manager.py): fixed-size blocks, a free queue that also holds freed blocks still
cached for prefix reuse and evicts them least-recently-freed first, blocks of a finished or
preempted request freed in reverse order (its tail is evicted first), full blocks cached under
a hash chained from their parent block, and a prefix hit that takes cached blocks back out of
the free queue.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class StepModel:
    """Seconds per engine step for a model on an accelerator (defaults: Qwen3-4B, one H100)."""

    weight_bytes: float = 8.04e9
    kv_bytes_per_token: int = 147_456
    matmul_params: float = 3.63e9  # per scheduled token: 2 FLOPs each
    head_params: float = 0.389e9  # the (tied) LM head, per sampled token
    attn_flops_per_pair: float = 589_824.0  # per (query token, context token)
    hbm_bytes_per_s: float = 3.35e12
    peak_flops: float = 989e12
    hbm_efficiency: float = 0.8
    mfu: float = 0.5

    def __post_init__(self):
        for key in ("weight_bytes", "kv_bytes_per_token", "matmul_params", "hbm_bytes_per_s",
                    "peak_flops"):
            if not getattr(self, key) > 0:
                raise ValueError(f"StepModel.{key}={getattr(self, key)!r} must be > 0")
        for key in ("hbm_efficiency", "mfu"):
            if not 0 < getattr(self, key) <= 1:
                raise ValueError(f"StepModel.{key}={getattr(self, key)!r} must be in (0, 1]")

    def memory_s(self, kv_tokens_read: float, steps: float = 1.0) -> float:
        """Time to read the weights `steps` times and `kv_tokens_read` tokens of KV."""
        read = steps * self.weight_bytes + kv_tokens_read * self.kv_bytes_per_token
        return read / (self.hbm_bytes_per_s * self.hbm_efficiency)

    def compute_s(self, tokens: float, sampled: float, attn_pairs: float) -> float:
        flops = (2 * self.matmul_params * tokens + 2 * self.head_params * sampled
                 + self.attn_flops_per_pair * attn_pairs)
        return flops / (self.peak_flops * self.mfu)

    def step_s(self, kv_tokens_read: float, tokens: float, sampled: float,
               attn_pairs: float) -> float:
        """One step: `tokens` scheduled (decode + prefill), `sampled` of them sample a token,
        reading `kv_tokens_read` tokens of KV; `attn_pairs` (query, key) pairs attended."""
        return max(self.memory_s(kv_tokens_read),
                   self.compute_s(tokens, sampled, attn_pairs))

    def decode_step_s(self, context: float) -> float:
        """One decode step of a single sequence with `context` tokens (the chain bound)."""
        return self.step_s(context, 1, 1, context)


class Block:
    __slots__ = ("id", "ref", "hash")

    def __init__(self, block_id: int):
        self.id, self.ref, self.hash = block_id, 0, None


class BlockPool:
    """`num_blocks` KV blocks; see the module docstring for the rules it follows."""

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks={num_blocks!r} must be >= 1")
        self.num_blocks = num_blocks
        self.free: OrderedDict[int, Block] = OrderedDict(
            (i, Block(i)) for i in range(num_blocks))  # front = evicted first
        self.cached: dict[int, Block] = {}  # block hash -> the block that holds it
        self.evictions = 0  # cached blocks reused for other content

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take: never used, or freed (cached or not)."""
        return len(self.free)

    def lookup(self, hashes: list[int], max_blocks: int) -> list[Block]:
        """The cached blocks of the longest prefix of `hashes` (at most `max_blocks`)."""
        hits = []
        for h in hashes[:max_blocks]:
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def free_in(self, blocks: list[Block]) -> int:
        """How many of `blocks` sit in the free queue (taking them costs free blocks)."""
        return sum(b.ref == 0 for b in blocks)

    def touch(self, blocks: list[Block]) -> None:
        """Take prefix-hit blocks (out of the free queue where they were freed)."""
        for block in blocks:
            if block.ref == 0:
                del self.free[block.id]
            block.ref += 1

    def allocate(self, n: int) -> list[Block]:
        """`n` blocks from the front of the free queue, evicting what they cached."""
        assert n <= len(self.free), (n, len(self.free))
        out = []
        for _ in range(n):
            _, block = self.free.popitem(last=False)
            if block.hash is not None:
                if self.cached.get(block.hash) is block:
                    del self.cached[block.hash]
                block.hash = None
                self.evictions += 1
            block.ref = 1
            out.append(block)
        return out

    def cache(self, block: Block, block_hash: int) -> None:
        """Mark a full block as holding `block_hash` (unless another block already does)."""
        if block.hash is None and block_hash not in self.cached:
            block.hash = block_hash
            self.cached[block_hash] = block

    def release(self, blocks: list[Block]) -> None:
        """Free a request's blocks, tail first, so that its tail is evicted first."""
        for block in reversed(blocks):
            block.ref -= 1
            if block.ref == 0:
                self.free[block.id] = block
