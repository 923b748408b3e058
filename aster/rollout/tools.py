"""`rollout.tools`: the one tool description SFT, RL and evaluation all render.

A model sees the tool schema in its system prompt; SFT data carries the schema its teacher
saw, and a policy trained on one description and rolled out or evaluated under another is
shown a prompt it never trained on. So one key names the schema everywhere: ``aster`` (aster's
own code interpreter), a list of schemas written in the config, or a JSON file holding one
schema or a list. SFT renders every conversation with it (a data file whose own schema differs
is said once, in the log), the agent loop renders every prompt with it.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

from aster.errors import ConfigError
from aster.rollout.chat import CODE_INTERPRETER_TOOL, TOOL_NAME

log = logging.getLogger("aster")


def tool_schemas(spec) -> list[dict]:
    """The tool schemas `spec` (rollout.tools) names, in chat-template form."""
    if spec is None or spec == "aster":
        return [CODE_INTERPRETER_TOOL]
    if isinstance(spec, str):
        return json.loads(_read(spec))
    return check_schemas(spec, "rollout.tools")


@lru_cache(maxsize=8)
def _read(path: str) -> str:  # the file once per run, as JSON text (callers get fresh lists)
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"rollout.tools={path!r}: cannot read it ({exc.strerror}); give a "
                          "JSON file of tool schemas, a list in the config, or 'aster'") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"rollout.tools={path!r} is not JSON ({exc.msg} at line "
                          f"{exc.lineno}); give a JSON file of tool schemas") from None
    return json.dumps(check_schemas(data, f"rollout.tools={path!r}"))


def check_schemas(data, where: str) -> list[dict]:
    """`data` (one schema or a list, with or without the {"type": "function"} wrapper) as a
    list of wrapped schemas; one that names no code_interpreter tool is a ConfigError (the
    agent loop runs only that tool)."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data or not all(isinstance(t, dict) for t in data):
        raise ConfigError(f"{where} must be a non-empty list of tool schemas")
    tools = [t if "function" in t else {"type": "function", "function": t} for t in data]
    names = [t["function"].get("name") if isinstance(t["function"], dict) else None
             for t in tools]
    if TOOL_NAME not in names:
        raise ConfigError(f"{where} has no tool named {TOOL_NAME!r} (found {names}); the "
                          "agent loop runs only that tool")
    return tools


def same_schemas(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
