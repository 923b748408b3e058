"""`aster data synth` against a fake OpenAI-compatible server on 127.0.0.1 (real sandbox)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aster.cli import main
from aster.data.curate import trajectory_stats
from aster.data.formats import load_sft


class FakeTeacher(BaseHTTPRequestHandler):
    """Two stateful calls (x defined, then used), then a boxed answer read from the tool."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["tools"][0]["function"]["name"] == "code_interpreter"
        tool_outputs = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        problem = body["messages"][0]["content"].split("\n")[0]
        n = int(problem.split()[-1].rstrip("?"))
        if len(tool_outputs) == 0:
            message = {"role": "assistant", "content": None, "reasoning_content": "set x",
                       "tool_calls": [{"id": "c0", "type": "function", "function": {
                           "name": "code_interpreter", "arguments": json.dumps(
                               {"code": f"x = {n} * 1000"})}}]}
        elif len(tool_outputs) == 1:
            message = {"role": "assistant", "content": "", "reasoning_content": "use x",
                       "tool_calls": [{"id": "c1", "type": "function", "function": {
                           "name": "code_interpreter",
                           "arguments": json.dumps({"code": "print(x + 1)"})}}]}
        else:
            message = {"role": "assistant", "reasoning_content": "done",
                       "content": f"\\boxed{{{tool_outputs[-1].strip()}}}"}
        data = json.dumps({"choices": [{"message": message, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def teacher_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTeacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_synth_runs_tools_in_sandbox_and_resumes(tmp_path, teacher_url, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"problem": f"What is {i}?", "answer": str(i * 1000 + 1)})
                               + "\n" for i in range(1, 4)))
    out = tmp_path / "sft.jsonl"
    args = ["data", "synth", str(prompts), str(out), "--endpoint", teacher_url,
            "--concurrency", "2", "--no-progress"]
    assert main(args) == 0
    loaded = load_sft(out)
    assert loaded.layout == "aster" and len(loaded.examples) == 3
    for ex in loaded.examples:
        stats = trajectory_stats(ex)
        assert stats.tool_calls == 2 and stats.use == "causal" and stats.correct is True
        assert ex["messages"][1]["content"] == "<think>\nset x\n</think>"
    # a killed run leaves a cut-off line; the rerun drops it and redoes that sample only
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    capsys.readouterr()
    assert main(args) == 0
    assert "wrote 1 new trajectories" in capsys.readouterr().out
    assert len(load_sft(out).examples) == 3


def test_unreachable_teacher_is_a_user_error(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"problem": "What is 1?", "answer": "1"}) + "\n")
    rc = main(["data", "synth", str(prompts), str(tmp_path / "o.jsonl"), "--endpoint",
               "http://127.0.0.1:9/v1", "--no-progress"])
    assert rc == 2 and "teacher endpoint" in capsys.readouterr().err


def test_synth_from_endpoint_to_sft4k_parquet(tmp_path, teacher_url):
    import pyarrow.parquet as pq

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"problem": f"What is {i}?", "answer": str(i * 1000 + 1)})
                               + "\n" for i in range(1, 3)))
    out = tmp_path / "sft.parquet"
    assert main(["data", "synth", str(prompts), str(out), "--endpoint", teacher_url,
                 "--no-progress"]) == 0
    rows = pq.read_table(out).to_pylist()
    assert [t["role"] for t in rows[0]["conversations"]] == [
        "user", "function", "tool", "function", "tool", "assistant"]
    assert all(r["correct"] and r["tool_calls"] == 2 for r in rows)
    assert load_sft(out).layout == "sharegpt" and not list(tmp_path.glob(".sft.parquet.parts"))
