"""AgentLoop and run_rollouts: drive an Engine and a SandboxPool over many prompts at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib

from aster.progress import Progress
from aster.reward import extract_answer, score
from aster.rollout.admission import KVAdmission
from aster.rollout.agent import (
    BusyClock,
    RequestStream,
    Trajectory,
    TurnBatcher,
    TurnRecord,
    _normalise_prompt,
    union_seconds,
)
from aster.rollout.chat import (
    parse_tool_calls,
    tool_error_message,
    truncate_middle,
)
from aster.rollout.chat_format import chat_format
from aster.rollout.engine import Engine, SamplingParams
from aster.rollout.tools import tool_schemas
from aster.sandbox import format_tool_response

log = logging.getLogger("aster")


def stop_token_ids(tokenizer) -> list[int]:
    """End-of-turn ids: the tokenizer's eos and, where it exists, <|endoftext|>."""
    ids = [tokenizer.eos_token_id]
    other = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(other, int) and other != tokenizer.unk_token_id and other not in ids:
        ids.append(other)
    return [i for i in ids if i is not None]


class AgentLoop:
    """Multi-turn tool rollouts. `cfg` is a RolloutConfig (limits, sampling); eval passes one
    with its own temperature / budgets. After `run`, `stats` holds the wall-time split.
    `label` names the batch on its progress bar or log line (aster.progress); `announce` logs
    its start and end too (evaluation)."""

    def __init__(self, engine: Engine, tokenizer, pool, cfg, *, max_batch: int | None = None,
                 gather_s: float = 0.02, seed: int | None = None, label: str = "rollouts",
                 announce: bool = False):
        self.engine, self.tokenizer, self.pool, self.cfg = engine, tokenizer, pool, cfg
        self.max_batch = max_batch or cfg.max_concurrency
        self.gather_s = gather_s
        self.seed = seed
        self.label, self.announce = label, announce
        self.format = chat_format(tokenizer, tool_schemas(cfg.tools))
        self.stops = stop_token_ids(tokenizer)
        self.stats: dict = {}

    def run(self, prompts, samples_per_prompt: int = 1,
            only: list[tuple[int, int]] | None = None) -> list[Trajectory]:
        """Roll out every prompt `samples_per_prompt` times (prompt-major order), or only the
        (prompt, sample) pairs `only` names, in its order."""
        return asyncio.run(self.arun(prompts, samples_per_prompt, only))

    async def arun(self, prompts, samples_per_prompt: int = 1,
                   only: list[tuple[int, int]] | None = None) -> list[Trajectory]:
        pairs = only if only is not None else [
            (i, s) for i in range(len(prompts)) for s in range(samples_per_prompt)]
        jobs = [(i, s, *_normalise_prompt(prompts[i])) for i, s in pairs]
        if self.engine.continuous_batching:
            batcher = RequestStream(self.engine)
        else:
            batcher = TurnBatcher(self.engine, self.max_batch, self.gather_s)
        self._batcher, self._tools = batcher, BusyClock()
        self._admission = self._gate(jobs)
        batcher.live = 0  # trajectories admitted and not finished (the gate may hold some)
        server = asyncio.create_task(batcher.serve())
        start = time.perf_counter()
        self._progress = Progress(len(jobs), self.label, announce=self.announce).start()
        try:
            # a trajectory's number (its sampling seeds) is its place in the full prompt-major
            # order, so a subset samples what the whole run would have for those pairs
            trajs = await asyncio.gather(*(self._trajectory(job[0] * samples_per_prompt + job[1],
                                                            job) for job in jobs))
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
            batcher.close()
            self._progress.close()
        self._record_stats(time.perf_counter() - start, batcher)
        return list(trajs)

    def _gate(self, jobs) -> KVAdmission:
        """max_concurrency, and with kv_admission the engine's KV cache at the running mean
        context (seeded with the mean prompt plus the response budget)."""
        capacity = getattr(self.engine, "capacity", None) or {}
        kv = capacity.get("kv_tokens") if self.cfg.kv_admission else None
        if not kv or not jobs:
            return KVAdmission(self.cfg.max_concurrency, None, 0)
        prompts = [len(self.format.prompt_ids(job[2])) for job in jobs[:64]]
        budget = sum(prompts) // len(prompts) + self.cfg.max_response_tokens
        return KVAdmission(self.cfg.max_concurrency, kv, budget)

    def _record_stats(self, wall: float, batcher: TurnBatcher | RequestStream) -> None:
        gen = union_seconds(batcher.clock.intervals)
        tool = union_seconds(self._tools.intervals)
        busy = union_seconds(batcher.clock.intervals + self._tools.intervals)
        self.stats = {"wall_s": wall, "gen_busy_s": gen, "tool_busy_s": tool,
                      "overhead_s": max(wall - busy, 0.0),
                      "overhead_frac": max(wall - busy, 0.0) / wall if wall > 0 else 0.0,
                      "num_batches": len(batcher.batch_sizes),
                      "mean_batch": (sum(batcher.batch_sizes) / len(batcher.batch_sizes)
                                     if batcher.batch_sizes else 0.0),
                      "peak_in_flight": self._admission.peak}

    # ---- one trajectory ---------------------------------------------------------------------
    async def _trajectory(self, number: int, job) -> Trajectory:
        prompt_index, sample_index, messages, truth = job
        async with self._admission.slot() as finished, contextlib.AsyncExitStack() as stack:
            self._batcher.live += 1
            traj = Trajectory(prompt_ids=self.format.prompt_ids(messages),
                              ground_truth=truth, prompt_index=prompt_index,
                              sample_index=sample_index)
            start = time.perf_counter()
            try:
                await self._turns(traj, number, stack)
                finished(len(traj.prompt_ids) + len(traj.response_ids))
            finally:
                self._batcher.live -= 1
                self._progress.finish_one()
                with self._tools.span():
                    await _close_quietly(stack)  # the sandbox session, if one was opened
            traj.timing["wall_s"] = time.perf_counter() - start
        traj.text = self.tokenizer.decode(traj.response_ids, skip_special_tokens=False)
        traj.answer = extract_answer(traj.final_text)
        if truth is not None:
            traj.reward = score(traj.final_text, truth, truncated=traj.truncated,
                                match=self.cfg.reward_match)
        return traj

    def _params(self, traj: Trajectory, number: int, max_new: int) -> SamplingParams:
        seed = None
        if self.seed is not None:  # stable per (run seed, trajectory, turn)
            seed = zlib.crc32(f"{self.seed}:{number}:{traj.num_turns}".encode())
        return SamplingParams(max_new_tokens=max_new, temperature=self.cfg.temperature,
                              top_p=self.cfg.top_p, top_k=self.cfg.top_k,
                              stop_token_ids=self.stops, seed=seed)

    async def _turns(self, traj: Trajectory, number: int, stack) -> None:
        cfg, session, parse_streak = self.cfg, None, 0
        while True:
            remaining = cfg.max_response_tokens - len(traj.response_ids)
            if remaining <= 0:
                traj.finish_reason = "length"
                return
            t0 = time.perf_counter()
            out = await self._batcher.generate(traj.prompt_ids + traj.response_ids,
                                               self._params(traj, number, remaining))
            traj.timing["gen_s"] += time.perf_counter() - t0
            self._progress.add_tokens(len(out.token_ids))
            traj.append(out.token_ids, out.logprobs)
            traj.num_turns += 1
            turn = TurnRecord(len(out.token_ids))
            traj.turns.append(turn)
            before = (traj.num_tool_calls, traj.tool_errors, traj.exec_errors)
            traj.final_text = self._turn_text(out.token_ids)
            if out.finish_reason == "length":
                traj.finish_reason = "length"
                return
            calls = parse_tool_calls(traj.final_text, in_think=self.format.opens_think)
            if not calls:
                traj.finish_reason = "answer" if extract_answer(traj.final_text) else "no_tool_call"
                return
            calls = self._select_calls(traj, calls)
            if not calls:  # on_parse_error=end and no well-formed call in the turn
                traj.finish_reason = "tool_parse_error"
                return
            if traj.num_tool_calls + sum(c.error is None for c in calls) > cfg.max_tool_calls:
                traj.finish_reason = "max_tool_calls"
                return
            try:
                if session is None and any(c.error is None for c in calls):
                    with self._tools.span():
                        session = await stack.enter_async_context(self.pool.asession())
                outputs = [await self._call(traj, session, c) for c in calls]
            except Exception as exc:  # noqa: BLE001 - a sandbox condition ends this one only
                log.warning("sandbox unavailable for trajectory %d: %s: %s", number,
                            type(exc).__name__, exc)
                traj.finish_reason = "sandbox_unavailable"
                return
            turn.calls, turn.tool_errors, turn.exec_errors = (
                traj.num_tool_calls - before[0], traj.tool_errors - before[1],
                traj.exec_errors - before[2])
            parse_streak = parse_streak + 1 if all(c.error for c in calls) else 0
            if parse_streak >= cfg.max_parse_errors:
                traj.finish_reason = "tool_parse_error"
                return
            tool_ids = self.format.tool_ids(outputs)
            if len(traj.response_ids) + len(tool_ids) >= cfg.max_response_tokens:
                traj.finish_reason = "length"
                return
            traj.append(tool_ids, None)
            turn.tool = len(tool_ids)

    def _select_calls(self, traj: Trajectory, calls: list) -> list:
        """The calls of a turn that run: malformed ones dropped under on_parse_error=end
        (counted as tool errors), then the first rollout.max_calls_per_turn."""
        if self.cfg.on_parse_error == "end":
            good = [c for c in calls if c.error is None]
            traj.tool_errors += len(calls) - len(good)
            calls = good
        if self.cfg.max_calls_per_turn:
            calls = calls[:self.cfg.max_calls_per_turn]
        return calls

    def _turn_text(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        eos = self.tokenizer.eos_token
        return text[:-len(eos)] if eos and text.endswith(eos) else text

    async def _call(self, traj: Trajectory, session, call) -> str:
        """Run one parsed call (or explain a malformed one); the text for its tool message."""
        if call.error is not None:
            traj.tool_errors += 1
            return tool_error_message(call.error)
        t0 = time.perf_counter()
        with self._tools.span():
            result = await session.arun(call.code, timeout=self.cfg.tool_timeout_s)
        traj.timing["tool_s"] += time.perf_counter() - t0
        traj.num_tool_calls += 1
        self._progress.add_tool_call()
        traj.exec_errors += 0 if result.ok else 1
        text = format_tool_response(result)
        limit = self.cfg.max_tool_output_chars
        return truncate_middle(text, limit) if limit else text


async def _close_quietly(stack: contextlib.AsyncExitStack) -> None:
    """Close the trajectory's sandbox session; a failure there is logged, never raised: the
    trajectory is complete and the pool frees the slot whatever the close met."""
    try:
        await stack.aclose()
    except Exception as exc:  # noqa: BLE001
        log.warning("sandbox session close failed: %s: %s", type(exc).__name__, exc)


def run_rollouts(engine: Engine, pool, prompts, cfg, *, tokenizer, samples_per_prompt: int = 1,
                 seed: int | None = None, stats: dict | None = None,
                 max_batch: int | None = None, only: list[tuple[int, int]] | None = None,
                 label: str = "rollouts", announce: bool = False) -> list[Trajectory]:
    """Roll out `prompts` (problem strings or dicts with `prompt`/`messages` and `answer`)
    with `engine` and the sandbox `pool` under the limits of `cfg` (a RolloutConfig).

    `stats`, when given, receives the wall-time split (generation, tools, loop overhead).
    `only` (prompt index, sample index) pairs: roll out just those (one rank's share of an
    evaluation), with the seeds the full run gives them. `label` / `announce`: the progress
    display (AgentLoop).
    """
    loop = AgentLoop(engine, tokenizer, pool, cfg, max_batch=max_batch, seed=seed, label=label,
                     announce=announce)
    trajs = loop.run(prompts, samples_per_prompt, only)
    if stats is not None:
        stats.update(loop.stats)
    return trajs
