"""A teacher behind an OpenAI-compatible chat-completions endpoint (e.g. a vLLM server).

The server applies its chat template and parses tool calls; each call is executed in one
stateful sandbox session per trajectory and its output sent back as a ``tool`` message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

from aster.data.formats import CODE_INTERPRETER_TOOL, TOOL_NAME, with_think
from aster.data.prompts import user_turn
from aster.data.synth_result import SynthResult
from aster.errors import AsterUserError
from aster.sandbox import format_tool_response


class TeacherError(AsterUserError):
    """The teacher endpoint could not be reached or answered with something unusable."""


class OpenAITeacher:
    """A minimal chat-completions client (standard library only); `cfg` is a SynthConfig."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.url = cfg.endpoint.rstrip("/") + "/chat/completions"

    def complete(self, messages: list[dict]) -> tuple[dict, str]:
        """The assistant message and the finish reason for one request."""
        body = {"model": self.cfg.model, "messages": messages, "tools": [CODE_INTERPRETER_TOOL],
                "temperature": self.cfg.temperature, "top_p": self.cfg.top_p,
                "max_tokens": self.cfg.max_tokens}
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as resp:
                reply = json.loads(resp.read())
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            raise TeacherError(f"teacher endpoint {self.url} failed ({exc}); check --endpoint "
                               "and that the server is up") from exc
        try:
            choice = reply["choices"][0]
            return choice["message"], choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError) as exc:
            raise TeacherError(f"teacher endpoint {self.url} returned no choices: "
                               f"{str(reply)[:200]}") from exc


def _internal_call(call: dict) -> dict:
    fn = call.get("function") or {}
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            args = {"code": args}
    return {"type": "function", "function": {"name": fn.get("name", TOOL_NAME),
                                             "arguments": args if isinstance(args, dict) else {}}}


def synthesize_one(teacher: OpenAITeacher, session, problem: str,
                   max_tool_calls: int) -> tuple[list[dict], str]:
    """One trajectory (internal messages) and why it ended: stop / length / max_tool_calls."""
    wire = [{"role": "user", "content": user_turn(problem)}]  # what the server sees
    internal = [dict(wire[0])]
    calls = 0
    while True:
        message, finish = teacher.complete(wire)
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        content = message.get("content") or ""
        tool_calls = message.get("tool_calls") or []
        out = {"role": "assistant", "content": with_think(reasoning, content)}
        if tool_calls:
            out["tool_calls"] = [_internal_call(c) for c in tool_calls]
        internal.append(out)
        wire.append({k: v for k, v in message.items() if v is not None})
        if not tool_calls or finish == "length":
            return internal, "length" if finish == "length" else "stop"
        for call, parsed in zip(tool_calls, out["tool_calls"]):
            code = parsed["function"]["arguments"].get("code", "")
            text = format_tool_response(session.run(str(code)))
            internal.append({"role": "tool", "content": text})
            wire.append({"role": "tool", "tool_call_id": call.get("id", ""), "content": text})
            calls += 1
        if calls >= max_tool_calls:
            return internal, "max_tool_calls"


class HTTPTeacher:
    """Runs (prompt, sample) items through the endpoint, `cfg.concurrency` at a time."""

    def __init__(self, cfg, pool):
        self.cfg, self.pool = cfg, pool
        self.client = OpenAITeacher(cfg)

    def _one(self, item):
        prompt, sample = item
        with self.pool.session() as session:
            messages, finish = synthesize_one(self.client, session, prompt["problem"],
                                              self.cfg.max_tool_calls)
        example = {"messages": messages, "tools": [CODE_INTERPRETER_TOOL],
                   "answer": prompt.get("answer")}
        return SynthResult(prompt, sample, finish, example=example)

    def run(self, todo: list):
        """Yield one-result lists as trajectories finish."""
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as executor:
            futures = [executor.submit(self._one, item) for item in todo]
            try:
                for future in as_completed(futures):
                    yield [future.result()]
            finally:
                for future in futures:
                    future.cancel()
