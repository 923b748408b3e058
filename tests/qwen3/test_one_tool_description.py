"""One tool description: SFT, RL and evaluation render the same tool schema (rollout.tools),
checked by rendering all three under the real Qwen3-4B-Thinking-2507 template."""

from __future__ import annotations

import json

import pytest

from aster.config import load_config
from aster.data.formats import load_sft
from aster.errors import ConfigError
from aster.eval import eval_rollout_config
from aster.rollout import RolloutConfig
from aster.rollout.loop import AgentLoop
from aster.rollout.tools import tool_schemas
from aster.train.sft_encoding import encode_dataset
from tests.qwen3.files import TOOLS, write_sft4k


def _prompts(tokenizer, rollout_cfg, eval_cfg, user):
    """The first prompt's ids as RL and as eval render it (the agent loop's own format)."""
    rl = AgentLoop(None, tokenizer, None, rollout_cfg).format.prompt_ids([user])
    ev = AgentLoop(None, tokenizer, None,
                   eval_rollout_config(eval_cfg, rollout_cfg)).format.prompt_ids([user])
    return rl, ev


@pytest.mark.parametrize("config", ["qwen3-4b", "qwen3-4b-reproduction", "tiny"])
def test_sft_rl_and_eval_render_the_same_tools(template_tokenizers, tmp_path, config, caplog):
    tokenizer = template_tokenizers["thinking"]
    cfg = load_config(config)
    write_sft4k(tmp_path / "sft4k.parquet")
    examples = load_sft(tmp_path / "sft4k.parquet").examples
    assert examples[0]["tools"] == json.loads(TOOLS)  # the data's own: "A tool for executing code."
    tools = tool_schemas(cfg.rollout.tools)
    encoded, _ = encode_dataset(tokenizer, examples, 32768, tools=tools)
    rl, ev = _prompts(tokenizer, cfg.rollout, cfg.eval, examples[0]["messages"][0])
    assert rl == ev
    assert encoded[0].ids[:len(rl)] == rl  # SFT's first sequence starts with RL's prompt
    text = tokenizer.decode(rl)
    want = tools[0]["function"]["description"]
    assert json.dumps(want)[1:-1] in text
    if config == "tiny":  # aster's own schema: the data's is replaced, and the log says so
        assert "stateful interpreter" in text and "carry another tool schema" in caplog.text
    else:  # the schema ASTER_SFT4K and the reproduction's RL show the model
        assert "A tool for executing code." in text and "stateful interpreter" not in text


def test_a_tools_file_and_bad_schemas(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(TOOLS)
    assert tool_schemas(str(path)) == json.loads(TOOLS)
    assert RolloutConfig(tools=str(path)).tools == str(path)
    with pytest.raises(ConfigError, match="cannot read it"):
        tool_schemas(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="no tool named 'code_interpreter'"):
        RolloutConfig(tools=[{"type": "function", "function": {"name": "search"}}])
    with pytest.raises(ValueError, match="rollout.tools"):
        RolloutConfig(tools="")
