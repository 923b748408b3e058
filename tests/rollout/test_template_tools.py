"""A chat template that cannot show the tool: the probe refuses it in one line (before, eval ran
with no tool description in the prompt and every sample ended `no_tool_call`), unless the user
names a template (model.chat_template: the shipped `hermes` or a file), which SFT, RL and eval
then all render with."""

from __future__ import annotations

import json
import shutil

import pytest

from aster.cli import main
from tests.qwen3.files import write_aime, write_dapo

# ChatML as small chat models ship it (SmolLM2-Instruct's): `tools` is never rendered
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "(message['content'] or '') + '<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SMALL = ["--device", "cpu", "model.dtype=float32", "rollout.engine=hf", "eval.budgets=[]"]


@pytest.fixture
def chatml_dir(qwen3_dirs, tmp_path, monkeypatch):
    """The tiny Qwen3 checkpoint with a ChatML template that ignores tools."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "chatml"
    shutil.copytree(qwen3_dirs["hybrid"], out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = CHATML
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    for name in ("chat_template.jinja", "chat_template.json"):
        (out / name).unlink(missing_ok=True)
    write_aime(tmp_path / "aime25.parquet", n=1)
    write_dapo(tmp_path / "dapo.parquet", n=2)
    return str(out)


def _errors(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("aster:")]


def test_probe_refuses_a_template_that_drops_the_tools(chatml_dir):
    from transformers import AutoTokenizer

    from aster.rollout.chat_format import ChatFormat, ChatTemplateError
    from aster.rollout.templates import use_template

    tok = AutoTokenizer.from_pretrained(chatml_dir)
    with pytest.raises(ChatTemplateError, match="model.chat_template=hermes"):
        ChatFormat(tok)
    fmt = ChatFormat(use_template(tok, "hermes"))
    head = fmt.prompt_text([{"role": "user", "content": "What is 1 + 1?"}])
    assert '"name": "code_interpreter"' in head and "<tools>" in head


def test_eval_refuses_then_runs_with_the_named_template(chatml_dir, capsys):
    args = ["eval", "--config", "qwen3-4b", "--model", chatml_dir, "--data", "aime25.parquet",
            "--k", "1", "-o", "out", *SMALL, "eval.max_tokens=16"]
    assert main(args) == 2
    (line,) = _errors(capsys)
    assert "does not show the tool schema" in line and "model.chat_template=hermes" in line
    assert main([*args, "model.chat_template=hermes"]) == 0


def test_rl_trains_and_saves_with_the_named_template(chatml_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from aster.rollout.templates import shipped

    template = tmp_path / "mine.jinja"
    template.write_text(shipped()["hermes"])
    rc = main(["rl", "--config", "qwen3-4b-rl-stage1", "-o", "run", *SMALL,
               f"model.path={chatml_dir}", f"model.chat_template={template}",
               "model.gradient_checkpointing=false", "distributed.strategy=none",
               "logging.tensorboard=false", "data.rl_path=dapo.parquet",
               "rl.prompts_per_step=2", "rl.group_size=2", "rl.mini_batch_prompts=2",
               "rl.stage1.max_steps=1", "rl.stage1.max_response_tokens=16",
               "rollout.max_response_tokens=16"])
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "rl_stage1" / "model")
    assert saved.chat_template == shipped()["hermes"]  # the next stage and eval render with it


def test_unknown_template_is_one_line(capsys):
    assert main(["config", "show", "model.chat_template=nonesuch"]) == 2
    (line,) = _errors(capsys)
    assert "model.chat_template='nonesuch'" in line and "hermes" in line
