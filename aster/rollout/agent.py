"""The agent loop: prompts -> multi-turn tool trajectories, many in flight at once.

Each trajectory is an asyncio task: generate an assistant turn, parse its tool calls, run them
in the trajectory's own sandbox session, append the templated tool turn, repeat until the model
answers or a limit hits. Generation requests from all tasks are batched per turn by a
`TurnBatcher` that runs the engine in a worker thread, or, for engines with continuous batching
(vLLM's continuous and async modes, the hf engine's continuous mode), sent one by one through a
`RequestStream`; either way sandbox calls of some
trajectories overlap the generation of others. Token-in/token-out: the sampled ids are kept as
sampled; tool-turn ids get loss mask 0 and log-prob 0 and count toward the response budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aster.rollout.chat import (
    prompt_messages,
)
from aster.rollout.engine import Engine, GenerationOutput, SamplingParams

log = logging.getLogger("aster")

# sandbox_unavailable: no session within sandbox.acquire_timeout_s, or the sandbox failed
# under the trajectory (a worker that could not start, a pool closed); it scores 0
FINISH_REASONS = ("answer", "length", "max_tool_calls", "no_tool_call", "tool_parse_error",
                  "sandbox_unavailable")
TRUNCATED = ("length", "max_tool_calls", "sandbox_unavailable")  # score 0 whatever the text


@dataclass
class TurnRecord:
    """One assistant turn of a trajectory: the tokens sampled, the tool-turn tokens appended
    after it (0: none) and the calls it made; lets evaluation cut a trajectory at a smaller
    budget exactly where a run at that budget would have stopped (aster.eval_budgets)."""

    sampled: int
    tool: int = 0
    calls: int = 0
    tool_errors: int = 0
    exec_errors: int = 0


@dataclass
class Trajectory:
    """One rollout. response_ids, loss_mask and rollout_logprobs have the same length; tool
    turns have mask 0 and log-prob 0. `text` decodes response_ids; `final_text` is the last
    assistant turn (the one the reward reads)."""

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    rollout_logprobs: list[float] = field(default_factory=list)
    num_tool_calls: int = 0  # calls executed in the sandbox
    tool_errors: int = 0  # malformed calls, fed back to the model as an error message
    exec_errors: int = 0  # executed calls that raised, timed out or crashed
    num_turns: int = 0
    finish_reason: str = ""
    text: str = ""
    final_text: str = ""
    answer: str | None = None
    ground_truth: str | None = None
    reward: float = 0.0
    prompt_index: int = 0
    sample_index: int = 0
    timing: dict = field(default_factory=lambda: {"gen_s": 0.0, "tool_s": 0.0, "wall_s": 0.0})
    turns: list[TurnRecord] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return self.finish_reason in TRUNCATED

    def append(self, ids: list[int], logprobs: list[float] | None) -> None:
        """Append sampled ids (with their log-probs, mask 1) or tool ids (None: mask 0)."""
        self.response_ids += ids
        self.loss_mask += [1 if logprobs is not None else 0] * len(ids)
        self.rollout_logprobs += logprobs if logprobs is not None else [0.0] * len(ids)


class BusyClock:
    """Union of busy intervals, to split wall time into generation / tools / loop overhead."""

    def __init__(self):
        self.intervals: list[tuple[float, float]] = []

    @contextlib.contextmanager
    def span(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.intervals.append((start, time.perf_counter()))


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


class TurnBatcher:
    """Collects generate() calls from many trajectories and runs them as engine batches in one
    worker thread. A batch starts when every live trajectory has asked (none is still in a
    tool call) or after a gather window, whichever comes first. The window is `gather_s` or
    half the mean batch time so far if longer: a straggler left out costs a whole extra decode
    pass, while waiting costs at most that fraction of one."""

    def __init__(self, engine: Engine, max_batch: int, gather_s: float = 0.02):
        self.engine = engine
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.clock = BusyClock()
        self.live = 0  # trajectories not finished (maintained by the loop)
        self.batch_sizes: list[int] = []
        self._queue: list[tuple[list[int], SamplingParams, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._running = 0  # requests inside the current engine batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aster-engine")

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationOutput:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((prompt_ids, params, future))
        self._wake.set()
        return await future

    async def serve(self) -> None:
        """Run batches until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            deadline = loop.time() + self._window()
            while (len(self._queue) < min(self.live, self.max_batch)
                   and loop.time() < deadline):
                await asyncio.sleep(0.001)
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            if self._queue:
                self._wake.set()
            if batch:
                await self._run_batch(loop, batch)

    def _window(self) -> float:
        spans = self.clock.intervals
        mean = sum(e - s for s, e in spans) / len(spans) if spans else 0.0
        return max(self.gather_s, 0.5 * mean)

    async def _run_batch(self, loop, batch) -> None:
        prompts = [b[0] for b in batch]
        params = [b[1] for b in batch]
        self.batch_sizes.append(len(batch))
        try:
            with self.clock.span():
                outputs = await loop.run_in_executor(self._executor, self.engine.generate,
                                                     prompts, params)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting trajectory
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), out in zip(batch, outputs):
            if not future.done():
                future.set_result(out)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


class RequestStream:
    """The TurnBatcher's interface for continuous-batching engines: every trajectory awaits its
    own `engine.agenerate()` and the engine schedules. The busy clock covers each request's
    span, so their union is the time the engine had work; `batch_sizes` records how many
    requests were in flight when each one was sent."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.clock = BusyClock()
        self.live = 0
        self.batch_sizes: list[int] = []
        self._in_flight = 0

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationOutput:
        self._in_flight += 1
        self.batch_sizes.append(self._in_flight)
        try:
            with self.clock.span():
                return await self.engine.agenerate(prompt_ids, params)
        finally:
            self._in_flight -= 1

    async def serve(self) -> None:
        """Nothing to schedule: the engine does it. Waits until cancelled."""
        await asyncio.Event().wait()

    def close(self) -> None:
        pass


def _normalise_prompt(item) -> tuple[list[dict], str | None]:
    """(messages, ground truth) from a problem string or a dict with `prompt`/`problem`/
    `messages` and `answer`/`ground_truth`."""
    if isinstance(item, str):
        return prompt_messages(item), None
    if not isinstance(item, dict):
        raise ValueError(f"a rollout prompt must be a string or a dict, got {type(item).__name__}")
    truth = item.get("answer", item.get("ground_truth"))
    truth = None if truth is None else str(truth)
    if "messages" in item:
        return list(item["messages"]), truth
    problem = item.get("prompt", item.get("problem"))
    if not isinstance(problem, str):
        raise ValueError("a rollout prompt dict needs `prompt`, `problem` or `messages`")
    return prompt_messages(problem, item.get("system")), truth
