"""Teacher synthesis (`aster data synth`): run a teacher on a prompt set with the sandbox as its
tool and write the trajectories in the SFT form (aster jsonl, one line per finished sample).

The teacher is an OpenAI-compatible chat-completions endpoint (e.g. a vLLM server): the server
applies its chat template and parses tool calls; each call is executed in one stateful
sandbox session per trajectory and its output sent back as a ``tool`` message. Resumable:
samples already in the output file are skipped; a line cut off by a kill is dropped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aster.data.formats import CODE_INTERPRETER_TOOL, TOOL_NAME, with_think
from aster.data.prompts import user_turn
from aster.errors import AsterUserError

logger = logging.getLogger("aster")


class TeacherError(AsterUserError):
    """The teacher endpoint could not be reached or answered with something unusable."""


@dataclass
class SynthConfig:
    """One teacher run's settings."""

    endpoint: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str = "teacher"
    samples_per_prompt: int = 1
    max_tool_calls: int = 50
    max_tokens: int = 16384  # per completion request
    temperature: float = 1.0
    top_p: float = 1.0
    concurrency: int = 8
    timeout_s: float = 600.0
    api_key: str | None = None

    def __post_init__(self):
        for key in ("samples_per_prompt", "max_tool_calls", "max_tokens", "concurrency"):
            if getattr(self, key) < 1:
                raise ValueError(f"synth.{key}={getattr(self, key)!r} must be >= 1")


class OpenAITeacher:
    """A minimal chat-completions client (standard library only)."""

    def __init__(self, cfg: SynthConfig):
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


def synthesize_one(teacher: OpenAITeacher, session, problem: str, max_tool_calls: int) -> tuple[list[dict], str]:
    """One trajectory (internal messages) and why it ended: stop / length / max_tool_calls."""
    from aster.sandbox import format_tool_response

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


def _done_keys(out: Path) -> set[tuple[str, int]]:
    """(problem, sample) already written; rewrites the file without a cut-off last line."""
    if not out.exists():
        return set()
    good, done = [], set()
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            done.add((row["problem"], int(row["sample"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        good.append(line)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("".join(f"{g}\n" for g in good), encoding="utf-8")
    os.replace(tmp, out)
    return done


def synthesize(prompts: list[dict], out_path: str | os.PathLike, cfg: SynthConfig,
               pool, progress: bool = True) -> dict:
    """Run the teacher on every (prompt, sample) not yet in `out_path`; append as they finish.

    Returns counts: done (this run), skipped (already there), finish reasons.
    """
    from tqdm import tqdm

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_keys(out)
    todo = [(p, s) for p in prompts for s in range(cfg.samples_per_prompt)
            if (p["problem"], s) not in done]
    teacher, lock = OpenAITeacher(cfg), threading.Lock()
    counts = {"done": 0, "skipped": len(prompts) * cfg.samples_per_prompt - len(todo)}
    bar = tqdm(total=len(todo), desc="synth", unit="traj", disable=not progress)

    def work(item):
        prompt, sample = item
        with pool.session() as session:
            messages, finish = synthesize_one(teacher, session, prompt["problem"],
                                              cfg.max_tool_calls)
        row = {"messages": messages, "tools": [CODE_INTERPRETER_TOOL],
               "answer": prompt.get("answer"), "problem": prompt["problem"],
               "sample": sample, "finish_reason": finish}
        with lock, open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            counts["done"] += 1
            counts[finish] = counts.get(finish, 0) + 1
            bar.update(1)

    with ThreadPoolExecutor(max_workers=cfg.concurrency) as executor:
        for future in [executor.submit(work, item) for item in todo]:
            future.result()
    bar.close()
    return counts
