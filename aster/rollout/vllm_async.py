"""VLLMAsyncEngine: vLLM's `AsyncLLM` with continuous batching (`rollout.vllm_mode=async`).

Each trajectory sends its turn the moment it is ready (`agenerate`) and vLLM's scheduler adds
it to the running batch at the next step, so one trajectory's sandbox call overlaps the others'
generation without waiting for a per-turn batch to fill or drain. AsyncLLM always runs its
engine core in a separate process, and its asyncio machinery is bound to the event loop it was
created in, so the engine owns one loop in a background thread and every caller's coroutine is
handed to it. New weights cross the process boundary as one serialised state dict (a host
copy per update, see aster.rollout.vllm_worker); the batched engine reloads in place instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Mapping

import torch

from aster.rollout.engine import Engine, GenerationOutput, SamplingParams, state_dict_of
from aster.rollout.vllm_engine import (
    base_args,
    engine_capacity,
    log_capacity,
    to_output,
    vllm_params,
)
from aster.rollout.vllm_worker import pack_state_dict

log = logging.getLogger("aster")



class VLLMAsyncEngine(Engine):
    """Continuous batching through `vllm.v1.engine.async_llm.AsyncLLM`; the same log-prob
    convention and weight-reload semantics as VLLMEngine."""

    name = "vllm-async"
    continuous_batching = True

    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0,
                 enable_sleep_mode: bool = False, max_model_len: int | None = None,
                 **engine_args):
        args = base_args(model_path, dtype, seed, enable_sleep_mode, max_model_len,
                         **engine_args)
        args.setdefault("disable_log_stats", True)
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="aster-vllm-async")
        self._thread.start()
        try:
            self.llm = self._call(self._start(args))
        except BaseException:
            self._stop_loop()
            raise
        # the KV figures stay in the core's process (None here); the limits are the engine's
        self.capacity = engine_capacity(self.llm.vllm_config)
        log_capacity("vllm (async)", self.capacity)
        self.supports_sleep = bool(enable_sleep_mode)
        self.push_path: str | None = None
        self.asleep = False

    @staticmethod
    async def _start(args: dict):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    def _call(self, coro):
        """Run `coro` on the engine's loop and wait for it from a plain thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _one(self, prompt: list[int], params: SamplingParams) -> GenerationOutput:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        vparams = vllm_params(params)
        vparams.output_kind = RequestOutputKind.FINAL_ONLY  # no per-token streaming traffic
        final = None
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=list(prompt)), vparams,
                                           request_id=f"aster-{next(self._ids)}"):
            final = out
        return to_output(final)

    async def agenerate(self, prompt: list[int], params: SamplingParams) -> GenerationOutput:
        """One request, awaited from any event loop; vLLM batches it with the others."""
        future = asyncio.run_coroutine_threadsafe(self._one(prompt, params), self._loop)
        return await asyncio.wrap_future(future)

    def generate(self, prompts, params):
        params = self._per_request(params, len(prompts))

        async def every():
            return await asyncio.gather(*(self._one(p, sp) for p, sp in zip(prompts, params)))

        return self._call(every())

    def load_weights(self, weights: Mapping[str, torch.Tensor] | torch.nn.Module) -> None:
        """Send the weights to the engine-core process and reload them in place there."""
        blob = pack_state_dict(state_dict_of(weights))
        paths = self._call(self.llm.collective_rpc("aster_reload_weights", args=(blob,)))
        if self.push_path is None:
            self.push_path = paths[0]
            log.info("vllm: weights are pushed in place with the worker's %s", self.push_path)
        self._call(self.llm.reset_prefix_cache())  # cached KV blocks belong to the old weights

    def sleep(self) -> None:
        if not self.supports_sleep:
            super().sleep()
        if not self.asleep:
            self._call(self.llm.sleep(level=1))
            self.asleep = True

    def wake(self) -> None:
        if not self.supports_sleep:
            super().wake()
        if self.asleep:
            self._call(self.llm.wake_up())
            self.asleep = False

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            async def shutdown():
                llm.shutdown()

            self._call(shutdown())
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
