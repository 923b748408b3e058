"""SimEngine: a stand-in rollout engine that schedules like vLLM 0.32's v1 engine on a modelled
clock, for trying the agent loop and the sandbox pool at the paper's shapes on a CPU.

What a request generates comes from a `script` (prompt ids -> the turn's ids, end-of-turn
included); when, and at what cost, comes from the scheduler, which follows
vllm/v1/core/sched/scheduler.py (FCFS policy):

- one engine step at a time; each step first schedules the RUNNING requests in order (a decode
  request: 1 token; one still prefilling: its remaining prompt, chunked by the token budget
  `max_num_batched_tokens`), then, only if nobody was preempted, admits WAITING requests in
  arrival order while the budget lasts and fewer than `max_num_seqs` run; the first waiting
  request that does not fit stops admission (head of line);
- KV blocks (`block_size` tokens) come from a `BlockPool` of `kv_tokens / block_size` blocks;
  when a running request cannot get its next block the last running request is preempted by
  recompute (its blocks freed, its computed tokens reset, put back at the front of WAITING);
- an admitted request first takes the cached blocks of its longest cached prefix (full blocks
  only, at most num_tokens - 1 tokens, as vLLM), and prefills the rest;
- a request that finishes frees its blocks, which stay cached until evicted (LRU).

Each step's modelled duration comes from `StepModel`; the engine waits it out on a clock that
runs `time_scale` times faster than the wall clock (model seconds = wall seconds x time_scale),
so tools that sleep their duration divided by the same factor line up with it. Decode-only
stretches with no event inside (no request finishing, no block shortage, nobody admissible)
are stepped as one span, cut short when a new request arrives, so the engine thread costs a
few operations per event rather than per token.

Both Engine interfaces share one scheduler and one prefix cache: `agenerate` (continuous
batching: each turn joins the running batch when it arrives) and `generate` (a batch returns
when its last request finishes: the per-turn barrier of the agent loop's TurnBatcher).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

from aster.rollout.engine import Engine, GenerationOutput, SamplingParams
from aster.rollout.sim_kv import BlockPool, StepModel

LOGPROB = -0.5  # every sampled token's log-prob (the trainer never sees these)
MAX_SPAN_STEPS = 4096


class _Request:
    __slots__ = ("tokens", "num_prompt", "target", "reason", "generated", "computed",
                 "blocks", "hashes", "ncached", "preemptions", "done")

    def __init__(self, prompt: list[int], out: list[int], params: SamplingParams,
                 max_model_len: int | None):
        stops = set(params.stop_token_ids)
        end = next((i + 1 for i, t in enumerate(out) if t in stops), len(out))
        limit = params.max_new_tokens
        if max_model_len is not None:
            limit = min(limit, max_model_len - len(prompt))
        self.tokens = list(prompt) + list(out[:end])
        self.num_prompt = len(prompt)
        self.target = min(end, limit)
        self.reason = "stop" if end <= limit else "length"
        self.generated = 0
        self.computed = 0
        self.blocks: list = []
        self.hashes: list[int] = []  # chained hashes of the full blocks known so far
        self.ncached = 0  # leading blocks already offered to the prefix cache
        self.preemptions = 0
        self.done: Callable[[GenerationOutput | BaseException], None] | None = None

    @property
    def num_tokens(self) -> int:
        return self.num_prompt + self.generated

    def output(self) -> GenerationOutput:
        ids = self.tokens[self.num_prompt:self.num_prompt + self.generated]
        return GenerationOutput(ids, [LOGPROB] * len(ids), self.reason)


class SimEngine(Engine):
    """See the module docstring. `script(prompt_ids) -> list[int]` is what the model would
    sample for that prompt (the loop's stop ids and max_new_tokens cut it as vLLM would)."""

    name = "sim"
    continuous_batching = True

    def __init__(self, script: Callable[[list[int]], list[int]], *, kv_tokens: int,
                 block_size: int = 16, max_num_seqs: int = 1024,
                 max_num_batched_tokens: int = 16384, max_model_len: int | None = None,
                 step_model: StepModel | None = None, time_scale: float = 1.0,
                 continuous: bool = True):
        for key, value in (("kv_tokens", kv_tokens), ("block_size", block_size),
                           ("max_num_seqs", max_num_seqs),
                           ("max_num_batched_tokens", max_num_batched_tokens)):
            if value < 1:
                raise ValueError(f"SimEngine {key}={value!r} must be >= 1")
        if not time_scale > 0:
            raise ValueError(f"SimEngine time_scale={time_scale!r} must be > 0")
        self.script = script
        self.block_size = block_size
        self.pool = BlockPool(kv_tokens // block_size)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.model = step_model or StepModel()
        self.scale = time_scale
        self.continuous_batching = continuous  # False: the agent loop batches per turn
        # what a started vLLM engine reports (aster.rollout.vllm_engine.engine_capacity)
        self.capacity = {"max_model_len": max_model_len,
                         "kv_tokens": self.pool.num_blocks * block_size,
                         "kv_blocks": self.pool.num_blocks, "block_size": block_size,
                         "max_num_seqs": max_num_seqs,
                         "max_num_batched_tokens": max_num_batched_tokens}
        self.running: list[_Request] = []
        self.waiting: deque[_Request] = deque()
        self._inbox: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._now = 0.0  # model seconds since the engine started
        self._ever: set[int] = set()  # every block hash this engine has computed
        self.busy: list[tuple[float, float]] = []  # wall-clock spans with a step running
        self.stats = {k: 0.0 for k in (
            "steps", "decode_tokens", "decode_context", "prefill_tokens", "prefix_hit_tokens",
            "reprefill_tokens", "recompute_tokens", "preemptions", "requests", "busy_s",
            "capacity_s", "running_s", "lag_max_s", "peak_running", "peak_blocks", "engine_cpu_s")}

    # ---- the Engine interface ---------------------------------------------------------------
    def generate(self, prompts, params) -> list[GenerationOutput]:
        params = self._per_request(params, len(prompts))
        outs: list[GenerationOutput | None] = [None] * len(prompts)
        left = threading.Semaphore(0)

        def setter(i):
            def done(out):
                outs[i] = out
                left.release()
            return done

        self._submit([self._request(p, sp, setter(i))
                      for i, (p, sp) in enumerate(zip(prompts, params))])
        for _ in prompts:
            left.acquire()
        for out in outs:
            if isinstance(out, BaseException):
                raise out
        return outs

    async def agenerate(self, prompt: list[int], params: SamplingParams) -> GenerationOutput:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle():
            if future.done():
                return
            if isinstance(out_box[0], BaseException):
                future.set_exception(out_box[0])
            else:
                future.set_result(out_box[0])

        out_box: list = [None]

        def done(out):
            out_box[0] = out
            loop.call_soon_threadsafe(settle)

        self._submit([self._request(prompt, params, done)])
        return await future

    def load_weights(self, weights) -> None:  # noqa: ARG002 - the stand-in samples a script
        """Nothing to load: what the stand-in samples comes from its script."""

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _fail_pending(self, error: BaseException | None = None) -> None:
        error = error or RuntimeError("the sim engine was closed with requests in flight")
        for req in [*self._inbox, *self.waiting, *self.running]:
            req.done(error)
        self._inbox.clear()
        self.waiting.clear()
        self.running.clear()

    # ---- clock ------------------------------------------------------------------------------
    def now(self) -> float:
        """Model seconds since the engine's first request."""
        return (time.perf_counter() - self._t0) * self.scale if self._thread else 0.0

    def _request(self, prompt, params: SamplingParams, done) -> _Request:
        if self.max_model_len is not None and len(prompt) >= self.max_model_len:
            raise ValueError(f"a prompt of {len(prompt)} tokens does not fit max_model_len="
                             f"{self.max_model_len}; raise it or shorten the prompt")
        req = _Request(prompt, self.script(list(prompt)), params, self.max_model_len)
        if req.num_prompt + req.target > self.pool.num_blocks * self.block_size:
            raise ValueError(f"a request of {req.num_prompt + req.target} tokens can never fit "
                             f"the KV cache of {self.pool.num_blocks * self.block_size} tokens; "
                             "raise kv_tokens or lower max_new_tokens")
        req.done = done
        return req

    def _submit(self, reqs: list[_Request]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the sim engine is closed")
            if self._thread is None:
                self._t0 = time.perf_counter()
                self._thread = threading.Thread(target=self._serve, name="aster-sim-engine",
                                                daemon=True)
                self._thread.start()
            self._inbox += reqs
            self.stats["requests"] += len(reqs)
            self._cond.notify_all()

    def _wait_until(self, model_t: float, interruptible: bool) -> bool:
        """Sleep until the model clock reads `model_t`; True if a new request cut it short."""
        with self._cond:
            while not self._closed:
                if interruptible and self._inbox:
                    return True
                left = self._t0 + model_t / self.scale - time.perf_counter()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return False

    def _start_step(self) -> float:
        """The model time a step starts: when the last one ended. An engine thread that got
        the CPU late runs its next steps back to back until it is in time again (a fixed
        time step), so the box's load does not become model time; the largest lag is
        recorded (`lag_max_s`, model seconds) to show how far the clocks drifted apart."""
        lag = (time.perf_counter() - self._t0) * self.scale - self._now
        if lag > self.stats["lag_max_s"]:
            self.stats["lag_max_s"] = lag
        return self._now

    # ---- the engine thread ------------------------------------------------------------------
    def _serve(self) -> None:
        """The engine thread. A failure inside it (a bug, or a stall) fails every request in
        flight with the error instead of leaving their callers waiting for ever."""
        try:
            self._serve_loop()
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
            with self._cond:
                self._closed = True
                self._fail_pending(exc)

    def _serve_loop(self) -> None:
        cpu0 = time.thread_time()
        while True:
            self.stats["engine_cpu_s"] = time.thread_time() - cpu0
            with self._cond:
                idle = not (self.running or self.waiting)
                while not (self._inbox or self.running or self.waiting or self._closed):
                    self._cond.wait()
                if self._closed:
                    self._fail_pending()
                    return
                self.waiting.extend(self._inbox)
                self._inbox.clear()
            if idle:  # the model clock ran on while there was nothing to do
                self._now = max(self._now, (time.perf_counter() - self._t0) * self.scale)
            if (self.running or self.waiting) and not self._step():
                raise RuntimeError(f"the sim engine stalled: {len(self.waiting)} requests wait "
                                   "and none can be scheduled")
            self._decode_span()

    def _step(self) -> bool:
        scheduled = self._schedule()
        if not scheduled:
            return bool(self.running)  # nothing scheduled with nothing running: a stall
        start = self._start_step()
        kv_read = sum(r.computed + n for r, n in scheduled)
        sampled = sum(r.computed + n >= r.num_tokens for r, n in scheduled)
        pairs = sum(n * (r.computed + (n + 1) / 2) for r, n in scheduled)
        tokens = sum(n for _, n in scheduled)
        dt = self.model.step_s(kv_read, tokens, sampled, pairs)
        self._account(start, dt, 1, len(scheduled), self._held_blocks())
        self._wait_until(start + dt, interruptible=False)
        for req, n in scheduled:
            if n == 1 and req.computed == req.num_tokens - 1:
                self.stats["decode_tokens"] += 1
                self.stats["decode_context"] += req.computed + 1
            else:
                self.stats["prefill_tokens"] += n
            self._advance(req, n)
        return True

    def _account(self, start: float, dt: float, steps: int, running: int, held: float) -> None:
        s = self.stats
        s["steps"] += steps
        s["busy_s"] += dt
        s["running_s"] += dt * running
        s["capacity_s"] += dt * max(running / self.max_num_seqs, held / self.pool.num_blocks)
        s["peak_running"] = max(s["peak_running"], running)
        s["peak_blocks"] = max(s["peak_blocks"], held)
        real0 = self._t0 + start / self.scale
        real1 = self._t0 + (start + dt) / self.scale
        if self.busy and real0 - self.busy[-1][1] < 1e-4:
            self.busy[-1] = (self.busy[-1][0], real1)
        else:
            self.busy.append((real0, real1))
        self._now = start + dt

    def _held_blocks(self) -> int:
        return sum(len(r.blocks) for r in self.running)

    # ---- scheduling (vllm/v1/core/sched/scheduler.py, FCFS) ----------------------------------
    def _schedule(self) -> list[tuple[_Request, int]]:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[_Request, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.computed, budget)
            while not self._grow(req, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            if req not in self.running:
                break
            scheduled.append((req, n))
            budget -= n
            i += 1
        while not preempted and self.waiting and budget > 0 \
                and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            n = self._admit(req, budget)
            if n == 0:
                break
            self.waiting.popleft()
            self.running.append(req)
            scheduled.append((req, n))
            budget -= n
        return scheduled

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _grow(self, req: _Request, n: int) -> bool:
        """Blocks for `n` more computed tokens of a running request; False if none are free."""
        need = self._blocks_for(req.computed + n) - len(req.blocks)
        if need > self.pool.num_free:
            return False
        if need > 0:
            req.blocks += self.pool.allocate(need)
        return True

    def _admit(self, req: _Request, budget: int) -> int:
        """Take `req`'s cached prefix and blocks for its first chunk; tokens scheduled or 0.
        As vLLM 0.32 (scheduler_reserve_full_isl, on by default) a waiting request is
        admitted only if its whole sequence so far fits in the free blocks."""
        hits = self._hits(req)
        if not self._fits(req, hits):
            return 0
        computed = len(hits) * self.block_size
        n = min(req.num_tokens - computed, budget)
        need = self._blocks_for(computed + n) - len(hits)
        self.pool.touch(hits)
        req.blocks = hits + self.pool.allocate(need)
        req.computed = computed
        req.ncached = len(hits)
        seen = sum(h in self._ever for h in req.hashes[len(hits):])
        self.stats["prefix_hit_tokens"] += computed
        missed = min(seen * self.block_size, req.num_tokens - computed)
        key = "recompute_tokens" if req.preemptions else "reprefill_tokens"
        self.stats[key] += missed
        return n

    def _preempt(self, req: _Request) -> None:
        self.pool.release(req.blocks)
        req.blocks = []
        req.computed = req.ncached = 0
        req.preemptions += 1
        self.stats["preemptions"] += 1
        self.waiting.appendleft(req)

    def _extend_hashes(self, req: _Request, upto: int) -> None:
        """Chained hashes of the full blocks within the first `upto` tokens."""
        b = self.block_size
        for i in range(len(req.hashes), upto // b):
            parent = req.hashes[-1] if req.hashes else 0
            req.hashes.append(hash((parent, tuple(req.tokens[i * b:(i + 1) * b]))))

    def _advance(self, req: _Request, n: int) -> None:
        """`n` tokens of `req` computed this step; sample where the prompt is done."""
        req.computed += n
        full = req.computed // self.block_size
        self._extend_hashes(req, req.computed)
        for i in range(req.ncached, full):
            self.pool.cache(req.blocks[i], req.hashes[i])
            self._ever.add(req.hashes[i])
        req.ncached = max(req.ncached, full)
        if req.computed >= req.num_tokens:
            req.generated += 1
            if req.generated >= req.target:
                self._finish(req)

    def _finish(self, req: _Request) -> None:
        self.running.remove(req)
        self.pool.release(req.blocks)
        req.blocks = []
        req.done(req.output())

    # ---- decode spans ------------------------------------------------------------------------
    def _decode_span(self) -> None:
        """Step a stretch of pure decode steps at once: every running request decodes, nobody
        waiting could be admitted, and no request finishes or runs out of blocks before its
        end. A new request arriving cuts the span at the step in progress."""
        if not self.running or any(r.num_tokens - r.computed != 1 for r in self.running):
            return
        with self._cond:
            if self._inbox:
                return
        if self.waiting and len(self.running) < self.max_num_seqs and self._fits(self.waiting[0]):
            return
        steps = min(min(r.target - r.generated for r in self.running), MAX_SPAN_STEPS)
        steps = self._steps_with_blocks(steps)
        if steps < 2:
            return
        start = self._start_step()
        n = len(self.running)
        ctx0 = sum(r.computed + 1 for r in self.running)
        ends, t = [], 0.0
        for j in range(steps):
            kv = ctx0 + n * j
            t += self.model.step_s(kv, n, n, kv)
            ends.append(t)
        cut = self._wait_until(start + t, interruptible=True)
        done = steps
        if cut:  # the step in progress when the request arrived completes
            elapsed = (time.perf_counter() - self._t0) * self.scale - start
            done = next((j + 1 for j, e in enumerate(ends) if e >= elapsed), steps)
            self._wait_until(start + ends[done - 1], interruptible=False)
        held0 = self._held_blocks()
        for req in self.running:
            assert self._grow(req, done)
        held1 = self._held_blocks()
        self.stats["peak_blocks"] = max(self.stats["peak_blocks"], held1)
        for req in list(self.running):  # _advance removes the ones that finish
            self.stats["decode_tokens"] += done
            self.stats["decode_context"] += done * (req.computed + 1) + done * (done - 1) / 2
            req.computed += done - 1
            req.generated += done - 1
            self._advance(req, 1)
        self._account(start, ends[done - 1], done, n, (held0 + held1) / 2)

    def _hits(self, req: _Request) -> list:
        """The cached blocks of `req`'s longest cached prefix (at most num_tokens - 1)."""
        self._extend_hashes(req, req.num_tokens)
        return self.pool.lookup(req.hashes, (req.num_tokens - 1) // self.block_size)

    def _fits(self, req: _Request, hits: list | None = None) -> bool:
        """Whether `req`'s whole sequence would get blocks now (hits taken from the free
        queue count against the free blocks, as in vLLM's get_num_blocks_to_allocate)."""
        hits = self._hits(req) if hits is None else hits
        need = self._blocks_for(req.num_tokens) - len(hits) + self.pool.free_in(hits)
        return need <= self.pool.num_free

    def _steps_with_blocks(self, steps: int) -> int:
        """The most decode steps (up to `steps`) for which every running request gets its
        blocks without preempting anyone."""
        def need(j):
            return sum(max(0, self._blocks_for(r.computed + j) - len(r.blocks))
                       for r in self.running)
        lo, hi = 0, steps
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if need(mid) <= self.pool.num_free:
                lo = mid
            else:
                hi = mid - 1
        return lo
