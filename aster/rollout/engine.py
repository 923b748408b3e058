"""The rollout Engine interface: token ids in, sampled token ids + their log-probs out.

Log-prob convention (every engine): the log-probability of the sampled token under the
distribution it was sampled from, i.e. ``log_softmax(logits / temperature)`` restricted and
renormalised to the top-k / top-p set when those are on (temperature 0 means greedy and
reports ``log_softmax(logits)``). With top_p=1 and top_k=-1 (the RL default) this is exactly
what the trainer recomputes with ``token_logprobs(..., temperature=temperature)``.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from aster.errors import CapabilityError

log = logging.getLogger("aster")

FINISH_REASONS = ("stop", "length")


@dataclass
class SamplingParams:
    """How to sample one request."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature!r} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")


@dataclass
class GenerationOutput:
    """One request's result: the sampled ids (stop token included), their log-probs, and
    `finish_reason` "stop" (a stop token was sampled) or "length" (max_new_tokens reached)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str

    def __post_init__(self):
        assert len(self.token_ids) == len(self.logprobs)
        assert self.finish_reason in FINISH_REASONS, self.finish_reason


class Engine(ABC):
    """A generation engine the agent loop drives (hf, vllm).

    Engines with `continuous_batching` schedule requests themselves: the agent loop sends each
    trajectory's turn on its own through `agenerate()` the moment it is ready, instead of
    gathering a batch per turn for `generate()`.
    """

    name: str = ""
    supports_sleep: bool = False  # sleep()/wake() free and restore the KV cache
    asleep: bool = False  # between sleep() and wake()
    sleep_note: str = "this engine has no sleep mode"  # why not, when supports_sleep is False
    continuous_batching: bool = False
    # what a started engine got (vLLM: max_model_len, KV tokens and blocks, max_num_seqs, ...)
    capacity: dict | None = None

    @abstractmethod
    def generate(self, prompts: list[list[int]],
                 params: SamplingParams | list[SamplingParams]) -> list[GenerationOutput]:
        """Sample a continuation for every prompt (token ids); one output per prompt."""

    async def agenerate(self, prompt: list[int], params: SamplingParams) -> GenerationOutput:
        """Sample one request from a running event loop (continuous-batching engines)."""
        raise CapabilityError(f"the {self.name} engine batches per call; use generate()")

    @abstractmethod
    def load_weights(self, weights: Mapping[str, torch.Tensor] | torch.nn.Module) -> None:
        """Replace the policy weights in place (a state dict or a module with the same names)."""

    def sleep(self) -> None:
        """Free the KV cache (and offload weights where supported) while the trainer runs."""
        raise CapabilityError(f"the {self.name} engine cannot sleep here; check "
                              "engine.supports_sleep before calling sleep()")

    def wake(self) -> None:
        """Undo sleep()."""
        raise CapabilityError(f"the {self.name} engine cannot sleep here; check "
                              "engine.supports_sleep before calling wake()")

    # ---- the streamed weight push (aster.train.rollouts.push_weights) ----------------------
    # begin_push, push_bucket for every bucket, end_push, then wake_cache. Engines that can
    # take a partial update override them (vLLM: its weights woken alone, each bucket loaded
    # in place, the KV cache woken last); this default gathers the buckets and loads them once.
    def begin_push(self) -> None:
        """Make the weights writable (wake them if asleep)."""
        if self.supports_sleep and self.asleep:
            self.wake()
        self._pending_push: dict = {}

    def push_bucket(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        """Take one bucket of (checkpoint name, tensor) pairs."""
        self._pending_push.update(bucket)

    def end_push(self) -> None:
        """Every bucket is in: the new weights are the model's."""
        pending, self._pending_push = self._pending_push, {}
        self.load_weights(pending)

    def wake_cache(self) -> None:  # noqa: B027 - nothing left asleep by default
        """After the push (and the trainer's cache release): bring back the KV cache."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the engine's resources."""

    @staticmethod
    def _per_request(params, n: int) -> list[SamplingParams]:
        if isinstance(params, SamplingParams):
            return [params] * n
        params = list(params)
        if len(params) != n:
            raise ValueError(f"got {len(params)} SamplingParams for {n} prompts")
        return params


class SubmittingEngine(Engine):
    """An engine that schedules requests itself on its own thread: `_submit(prompt, params)`
    returns a concurrent Future; `agenerate` awaits one, `generate` submits all and waits."""

    continuous_batching = True

    def _submit(self, prompt: list[int], params: SamplingParams):
        raise NotImplementedError

    async def agenerate(self, prompt: list[int], params: SamplingParams) -> GenerationOutput:
        """One request; it joins the running batch at the engine's next step."""
        return await asyncio.wrap_future(self._submit(prompt, params))

    def generate(self, prompts, params):
        params = self._per_request(params, len(prompts))
        futures = [self._submit(p, sp) for p, sp in zip(prompts, params)]
        return [f.result() for f in futures]


def state_dict_of(weights: Mapping[str, torch.Tensor] | torch.nn.Module) -> dict:
    """A plain name -> tensor mapping from a state dict or a module (FSDP/compile prefixes
    removed so that trainer-side wrappers do not leak into the engine's names)."""
    items = weights.state_dict().items() if isinstance(weights, torch.nn.Module) else weights.items()
    out = {}
    for name, tensor in items:
        for prefix in ("_orig_mod.", "module.", "_fsdp_wrapped_module."):
            name = name.replace(prefix, "")
        out[name] = tensor.detach()
    return out

