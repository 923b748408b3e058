"""`aster plan`: the per-device memory plan of each phase of a run, before the run.

For a config and a node (devices, memory per device) this adds up, per device, what each phase
holds: the trainer's fp32 shards and AdamW state, its compute-dtype working copies, the
activations of one micro batch (with and without gradient checkpointing), the log-prob
kernel's workspace, the weight push's transient, and the colocated engine's weights and KV
cache at `rollout.gpu_memory_utilization`, with the KV tokens and the concurrent sequences
that cache holds at each stage's budget. A phase that does not fit is one error line naming
the key to change.

Every figure is an estimate from the model's shapes (formulas below, in bytes); the device
check's sft_qwen3_4b step prints this plan's figure beside the measured peak, so a lent GPU
validates it. Sizes are GiB (2**30 bytes); an "80 GB" H100 reports 79.6 GiB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from aster.errors import ConfigError
from aster.train.strategy import resolve_strategy, strategy_class

GiB = 2**30
# the device runtime's context, the collective's buffers and allocator fragmentation, per device
# and phase (an estimate: the context alone is ~0.5 GiB on an H100, the collective's buffers a
# few hundred MiB)
RUNTIME_RESERVE = 2.0 * GiB
# vLLM's own activations at its profile run and its captured graphs, inside its utilisation budget
# (an estimate; vLLM logs the measured figure at start-up as "model ... took ... GiB")
ENGINE_WORKSPACE = 2.0 * GiB
PROMPT_TOKENS = 2048  # the reproduction's max_prompt_length: room for the prompt in a rollout
EVAL_PROMPT_TOKENS = 4096  # aster.commands.eval.load_engine's room for the prompt
TRITON_SLICE = 8192  # the Triton backward's dlogits slice (kernels/triton/fused_loss.py)
CHUNK_ELEMENTS = 1 << 24  # kernels/chunked.py: one chunk's [n, V] fp32 logits


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a decoder-only transformer (Qwen3 layout: GQA, SwiGLU, q/k norm)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    source: str

    @property
    def layer_params(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return (2 * self.hidden * q + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate
                + 2 * self.hidden + 2 * self.head_dim)

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        head = 0 if self.tied else self.embed_params
        return self.layers * self.layer_params + self.embed_params + head + self.hidden

    @property
    def largest_tensor(self) -> int:
        q = self.heads * self.head_dim
        return max(self.embed_params, self.hidden * self.intermediate, self.hidden * q)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def layer_activation_bytes(self, dtype_bytes: int) -> int:
        """Bytes per token one layer keeps for its backward, without checkpointing: the two
        norms' inputs and outputs (plus their fp32 upcasts), q/k/v before and after their norm
        and RoPE, the attention output, the MLP's gate, up, activation and product. Attention
        itself is varlen / flash (no [T, T] scores)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        compute = dtype_bytes * (4 * self.hidden + 4 * q + 6 * kv + 4 * self.intermediate)
        return compute + 4 * (4 * self.hidden + q + kv)


# Shapes of the shipped configs' models when no local config.json says (Hugging Face configs)
KNOWN_SHAPES = {
    "qwen3-4b": ModelShape("Qwen3-4B", 2560, 36, 32, 8, 128, 9728, 151936, True,
                           "huggingface.co/Qwen/Qwen3-4B-Thinking-2507 config.json"),
    "qwen3-1.7b": ModelShape("Qwen3-1.7B", 2048, 28, 16, 8, 128, 6144, 151936, True,
                             "huggingface.co/Qwen/Qwen3-1.7B config.json"),
}


def shape_from_hf_config(config: dict, name: str, source: str) -> ModelShape:
    heads = config["num_attention_heads"]
    return ModelShape(name, config["hidden_size"], config["num_hidden_layers"], heads,
                      config.get("num_key_value_heads", heads),
                      config.get("head_dim") or config["hidden_size"] // heads,
                      config["intermediate_size"], config["vocab_size"],
                      bool(config.get("tie_word_embeddings", False)), source)


def model_shape(model_cfg) -> ModelShape:
    """The shape of `model.path`: its config.json when it is a local directory, the tiny
    model's section when empty, else the known table; an unknown hub name is an error."""
    path = model_cfg.path
    if not path:
        t = model_cfg.tiny
        return ModelShape("tiny", t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads,
                          t.head_dim, t.intermediate_size, t.vocab_size, True, "model.tiny")
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        try:
            return shape_from_hf_config(json.loads(config_file.read_text()), Path(path).name,
                                        str(config_file))
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{config_file}: not a decoder config aster plan reads ({exc}); "
                              "give a Hugging Face causal-LM directory") from None
    key = next((k for k in sorted(KNOWN_SHAPES, key=len, reverse=True)
                if k in Path(path).name.lower()), None)
    if key is None:
        raise ConfigError(f"model.path={path!r}: no local config.json and not a known shape "
                          f"({', '.join(s.name for s in KNOWN_SHAPES.values())}); give a local "
                          "model directory")
    return KNOWN_SHAPES[key]


@dataclass
class Phase:
    """One phase's per-device terms (name -> bytes), whether it fits and the key to change."""

    name: str
    terms: dict[str, float] = field(default_factory=dict)
    key: str = ""  # the config key that moves this phase's total most
    notes: list[str] = field(default_factory=list)
    kv_tokens: int = 0  # engine phases: tokens the KV cache holds
    context: int = 0  # engine phases: prompt + response budget of one sequence

    @property
    def total(self) -> float:
        return sum(self.terms.values())


@dataclass
class Plan:
    shape: ModelShape
    gpus: int
    device_bytes: float
    strategy: str
    dtype: str
    phases: list[Phase]
    max_utilization: float  # the highest rollout.gpu_memory_utilization every rollout fits at

    def failures(self) -> list[Phase]:
        return [p for p in self.phases if p.total > self.device_bytes]


# ---- the terms -------------------------------------------------------------------------------
def _shards(strategy: str, zero_stage: int, gpus: int) -> tuple[int, int, int]:
    """How many ways (params, grads, optimizer state) are split over the devices: the
    strategy's own answer."""
    return strategy_class(strategy).memory_shards(zero_stage, gpus)


def trainer_state(shape: ModelShape, strategy: str, dist_cfg, gpus: int,
                  *, grads: bool) -> dict[str, float]:
    """fp32 master weights, fp32 gradients (during the update only) and AdamW's two fp32
    moments, each over its shard count; nothing on the device with distributed.cpu_offload."""
    if dist_cfg.cpu_offload:
        return {"trainer fp32 state (offloaded)": 0.0}
    p_shards, g_shards, o_shards = _shards(strategy, dist_cfg.zero_stage, gpus)
    terms = {"trainer fp32 weights": 4 * shape.params / p_shards,
             "trainer AdamW moments": 8 * shape.params / o_shards}
    if grads:
        terms["trainer fp32 grads"] = 4 * shape.params / g_shards
    return terms


def working_weights(shape: ModelShape, param_shards: int, dtype_bytes: int) -> float:
    """The compute-dtype weights a forward/backward holds beyond the masters: FSDP2 (and ZeRO-3)
    gather two layers (the current one and the prefetched next) and the root (embedding, final
    norm) in the compute dtype, plus the unsharded fp32 gradients of one layer and of the root
    before their reduce-scatter; none / ddp run under autocast, whose cache keeps a compute-dtype copy of
    every weight for the forward."""
    if dtype_bytes == 4:
        return 0.0
    if param_shards > 1:  # parameters sharded: gathered a layer at a time
        return (dtype_bytes * (2 * shape.layer_params + shape.embed_params)
                + 4 * (shape.layer_params + shape.embed_params))
    return dtype_bytes * shape.params


def activations(shape: ModelShape, tokens: int, dtype_bytes: int, checkpointing: bool) -> float:
    """One micro batch of `tokens` packed tokens. With checkpointing: every layer's input
    (tokens x hidden) plus one layer recomputed in the backward with its gradients (twice its
    activations); without: every layer's activations plus one layer's gradients. An upper bound: the backward frees a layer's
    activations as their gradients appear."""
    per_layer = tokens * shape.layer_activation_bytes(dtype_bytes)
    final = tokens * shape.hidden * (dtype_bytes + 4)  # the final norm's output and fp32 upcast
    if checkpointing:
        return shape.layers * tokens * shape.hidden * dtype_bytes + 2 * per_layer + final
    return (shape.layers + 1) * per_layer + final


def logprob_workspace(shape: ModelShape, tokens: int, dtype_bytes: int, impl: str) -> float:
    """The lm_head's log-prob kernel (the [tokens, vocab] logits are never held): the hidden
    states' fp32 gradient, plus one dlogits slice [tokens, 8192] (Triton) or about three fp32
    blocks of CHUNK_ELEMENTS (chunked: two live logit chunks, one backward vocab slice)."""
    grad_hidden = 4 * tokens * shape.hidden
    if impl == "triton":
        return grad_hidden + dtype_bytes * tokens * TRITON_SLICE
    return grad_hidden + 3 * 4 * CHUNK_ELEMENTS


def push_transient(shape: ModelShape, bucket_bytes: float, dtype_bytes: int) -> float:
    """Extra bytes alive while weights stream into the engine: one bucket of compute-dtype
    tensors plus the largest parameter gathered in full in fp32 and its cast."""
    return bucket_bytes + (4 + dtype_bytes) * shape.largest_tensor


# ---- the phases ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    gpus: int
    gpu_bytes: float


def _dtype_bytes(name: str) -> int:
    return 4 if name == "float32" else 2  # auto on a GPU is bf16 (aster.train.precision)


def _engine_idle(cfg, node: Node) -> dict[str, float]:
    """The engine between rollouts: asleep it holds nothing on the device (its weights are on
    the host or discarded, its KV cache freed); without sleep mode it keeps its whole budget."""
    if cfg.rollout.enable_sleep_mode:
        return {}
    return {"engine (awake: rollout.enable_sleep_mode=false)":
            cfg.rollout.gpu_memory_utilization * node.gpu_bytes}


def update_terms(shape: ModelShape, tokens: int, strategy: str, gpus: int, dist_cfg,
                 dtype_bytes: int, checkpointing: bool, impl: str) -> dict[str, float]:
    """Per-device bytes of an optimizer update on micro batches of `tokens`, AdamW's moments
    resident (every step after the first); the engine and the reserve aside."""
    terms = trainer_state(shape, strategy, dist_cfg, gpus, grads=True)
    o_shards = 1 if dist_cfg.cpu_offload else _shards(strategy, dist_cfg.zero_stage, gpus)[2]
    # AdamW runs tensor by tensor (foreach=False): a few temporaries of the largest one
    terms["optimizer step temporaries"] = 2 * 4 * shape.largest_tensor / o_shards
    terms["compute-dtype working weights"] = working_weights(
        shape, _shards(strategy, dist_cfg.zero_stage, gpus)[0], dtype_bytes)
    terms["activations"] = activations(shape, tokens, dtype_bytes, checkpointing)
    terms["log-prob kernel workspace"] = logprob_workspace(shape, tokens, dtype_bytes, impl)
    return terms


def first_step_peak(terms: dict[str, float]) -> float:
    """The peak of a run's first update, which builds AdamW's moments only at its optimizer
    step: the larger of the backward (no moments yet) and the step (no activations)."""
    backward = sum(v for k, v in terms.items()
                   if k not in ("trainer AdamW moments", "optimizer step temporaries"))
    step = sum(v for k, v in terms.items() if k.startswith(("trainer", "optimizer")))
    return max(backward, step)


def _update_key(phase: Phase, node: Node, tokens_key: str, checkpointing: bool,
                can_shard: bool) -> str:
    """The key that makes an update fit: what dominates beyond the per-token terms first."""
    engine = sum(v for k, v in phase.terms.items() if k.startswith("engine"))
    if engine and phase.total - engine <= node.gpu_bytes:
        return "rollout.enable_sleep_mode (true: the engine frees its memory for updates)"
    fixed = sum(v for k, v in phase.terms.items()
                if k.startswith(("trainer", "optimizer", "compute-dtype", "reference", "runtime")))
    if fixed > node.gpu_bytes or (can_shard and fixed > node.gpu_bytes / 2):
        return ("distributed.strategy (fsdp2 shards the fp32 state over the devices) or "
                "distributed.cpu_offload")
    return tokens_key if checkpointing else "model.gradient_checkpointing"


def update_phase(name: str, cfg, shape, node, strategy, tokens: int, key: str,
                 impl: str) -> Phase:
    """An optimizer update on micro batches of `tokens` (SFT or RL)."""
    b = _dtype_bytes(cfg.model.dtype)
    ckpt = cfg.model.gradient_checkpointing
    phase = Phase(name)
    phase.terms.update(update_terms(shape, tokens, strategy, node.gpus, cfg.distributed, b,
                                    ckpt, impl))
    if name.startswith("rl") and cfg.rl.kl_coef > 0:
        p_shards = _shards(strategy, cfg.distributed.zero_stage, node.gpus)[0]
        phase.terms["reference policy"] = b * shape.params / p_shards
    phase.terms.update(_engine_idle(cfg, node))
    phase.terms["runtime reserve"] = RUNTIME_RESERVE
    can_shard = node.gpus > 1 and _shards(strategy, cfg.distributed.zero_stage, node.gpus)[0] == 1
    phase.key = _update_key(phase, node, key, ckpt, can_shard)
    other = activations(shape, tokens, b, not ckpt)
    total_other = phase.total - phase.terms["activations"] + other
    fits = "fits" if total_other <= node.gpu_bytes else "does not fit"
    phase.notes.append(f"{name}: {tokens:,} tokens per micro batch; "
                       f"{'without' if ckpt else 'with'} gradient checkpointing the activations "
                       f"would be {other / GiB:.1f} GiB, the phase {total_other / GiB:.1f} GiB "
                       f"({fits})")
    return phase


def push_phase(cfg, shape, node, strategy) -> Phase:
    """Weights streamed into the engine: its weights awake, its KV cache still asleep."""
    b = _dtype_bytes(cfg.model.dtype)
    bucket = cfg.rollout.weight_bucket_mb * 2**20
    phase = Phase("push", key="rollout.weight_bucket_mb")
    phase.terms.update(trainer_state(shape, strategy, cfg.distributed, node.gpus, grads=False))
    phase.terms["engine weights"] = b * shape.params
    phase.terms["push transient"] = push_transient(shape, bucket, b)
    phase.terms.update(_engine_idle(cfg, node))
    phase.terms["runtime reserve"] = RUNTIME_RESERVE
    return phase


def rollout_phase(name: str, cfg, shape, node, strategy, context: int) -> Phase:
    """Generation: the engine at its utilisation beside the trainer's resident state."""
    b = _dtype_bytes(cfg.model.dtype)
    util = cfg.rollout.gpu_memory_utilization
    phase = Phase(name, key="rollout.gpu_memory_utilization")
    phase.terms.update(trainer_state(shape, strategy, cfg.distributed, node.gpus, grads=False))
    budget = util * node.gpu_bytes
    kv_bytes = budget - b * shape.params - ENGINE_WORKSPACE
    phase.terms["engine weights"] = b * shape.params
    phase.terms["engine workspace"] = ENGINE_WORKSPACE
    phase.terms["engine KV cache"] = max(kv_bytes, 0.0)
    phase.terms["runtime reserve"] = RUNTIME_RESERVE
    kv_tokens = int(max(kv_bytes, 0.0) // shape.kv_bytes_per_token(b))
    phase.kv_tokens, phase.context = kv_tokens, context
    phase.notes.append(f"{name}: KV cache {max(kv_bytes, 0) / GiB:.1f} GiB = {kv_tokens:,} "
                       f"tokens = {kv_tokens // context} concurrent sequences at the full "
                       f"{context:,} tokens (rollout.max_concurrency={cfg.rollout.max_concurrency}"
                       " in flight; vLLM preempts beyond what fits)")
    return phase


def build_plan(cfg, gpus: int, gpu_memory_gb: float, kernel_impl: str = "triton") -> Plan:
    """The per-device plan of every phase the config's stages run, on `gpus` devices."""
    shape, node = model_shape(cfg.model), Node(gpus, gpu_memory_gb * GiB)
    strategy = resolve_strategy(cfg.distributed.strategy, gpus)
    stages = cfg.run.stages
    phases = []
    if "sft" in stages:
        tokens = cfg.sft.cutoff_len * cfg.sft.micro_batch_size
        phases.append(update_phase("sft update", cfg, shape, node, strategy, tokens,
                                   "sft.cutoff_len", kernel_impl))
    rl_stages = [s for s in ("rl_stage1", "rl_stage2") if s in stages]
    if rl_stages:
        phases.append(update_phase("rl update", cfg, shape, node, strategy,
                                   cfg.rl.max_tokens_per_micro_batch,
                                   "rl.max_tokens_per_micro_batch", kernel_impl))
    if rl_stages or "eval" in stages:
        phases.append(push_phase(cfg, shape, node, strategy))
    for stage in rl_stages:
        budget = getattr(cfg.rl, stage.removeprefix("rl_")).max_response_tokens
        phases.append(rollout_phase(f"rollout {stage.removeprefix('rl_')}", cfg, shape, node,
                                    strategy, PROMPT_TOKENS + budget))
    if "eval" in stages:
        phases.append(rollout_phase("eval", cfg, shape, node, strategy,
                                    EVAL_PROMPT_TOKENS + cfg.eval.max_tokens))
    resident = max((sum(v for k, v in p.terms.items() if k.startswith("trainer"))
                    for p in phases if p.context), default=0.0)
    max_util = (node.gpu_bytes - resident - RUNTIME_RESERVE) / node.gpu_bytes
    return Plan(shape, gpus, node.gpu_bytes, strategy, cfg.model.dtype, phases,
                max(0.0, int(max_util * 100) / 100))


def problem(plan: Plan) -> str | None:
    """The first reason the plan does not fit, as one line naming the key to change."""
    for phase in plan.phases:
        if phase.total > plan.device_bytes:
            return (f"phase '{phase.name}' needs {phase.total / GiB:.1f} GiB per device of "
                    f"{plan.device_bytes / GiB:.1f}: change {phase.key}"
                    + (f" (at most {plan.max_utilization:.2f} fits beside the trainer)"
                       if phase.key == "rollout.gpu_memory_utilization" else ""))
        context = phase.context
        if context and phase.kv_tokens < context:
            return (f"phase '{phase.name}': the KV cache holds {phase.kv_tokens:,} tokens, less "
                    f"than one {context:,}-token sequence: raise rollout.gpu_memory_utilization "
                    "or lower the stage's response budget")
    return None


def format_plan(plan: Plan) -> str:
    """The plan as a table (GiB per device; one column per phase) and its notes."""
    shape = plan.shape
    head = (f"{shape.name}: {shape.params / 1e9:.2f}B parameters (shape: {shape.source}); "
            f"{plan.gpus} devices x {plan.device_bytes / GiB:.1f} GiB, strategy {plan.strategy}, "
            f"model.dtype {plan.dtype}")
    rows = list(dict.fromkeys(k for p in plan.phases for k in p.terms))
    width = max([len(r) for r in rows] + [20])
    names = [p.name for p in plan.phases]
    col = max(len(n) for n in names) + 2 if names else 10
    lines = [head, "", f"{'GiB per device':<{width}}" + "".join(f"{n:>{col}}" for n in names)]
    for row in rows:
        cells = [p.terms.get(row) for p in plan.phases]
        lines.append(f"{row:<{width}}" + "".join(
            f"{'-':>{col}}" if c is None else f"{c / GiB:>{col}.2f}" for c in cells))
    lines.append(f"{'total':<{width}}" + "".join(f"{p.total / GiB:>{col}.2f}"
                                                 for p in plan.phases))
    lines.append(f"{'fits':<{width}}" + "".join(
        f"{'yes' if p.total <= plan.device_bytes else 'NO':>{col}}" for p in plan.phases))
    lines.append("")
    lines += [n for p in plan.phases for n in p.notes]
    lines.append(f"rollout.gpu_memory_utilization: at most {plan.max_utilization:.2f} fits "
                 "beside the trainer's resident state and the runtime reserve on this node")
    return "\n".join(lines)
