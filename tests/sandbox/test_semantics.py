"""Jupyter-like semantics of a session, isolation between sessions, bad input, the config."""

from __future__ import annotations

import asyncio
import os

import pytest

from aster.sandbox import (
    ExecResult,
    SandboxClosedError,
    SandboxConfig,
    SandboxPool,
    format_tool_response,
)


def test_state_persists_across_calls(pool):
    with pool.session() as s:
        assert s.run("x = 21\ndef double(v):\n    return 2 * v\nimport fractions").ok
        r = s.run("double(x), fractions.Fraction(1, 3)")
        assert r.status == "ok" and r.output == "(42, Fraction(1, 3))\n"


def test_assignments_before_an_exception_persist(pool):
    with pool.session() as s:
        r = s.run("a = 1\nb = 1 / 0\nc = 3")
        assert r.status == "error" and "ZeroDivisionError" in r.output
        assert not r.state_reset
        assert s.run("a").output == "1\n"
        assert "NameError" in s.run("c").output


def test_last_expression_echoed_once(pool):
    with pool.session() as s:
        assert s.run("n = 0\ndef f():\n    global n\n    n += 1\n    return n\nf()").output == "1\n"
        assert s.run("n").output == "1\n"  # evaluated exactly once
        assert s.run("None").output == ""
        assert s.run("if True:\n    5").output == ""  # not a top-level expression
        assert s.run("for i in range(2):\n    i").output == ""
        assert s.run("print('hi')").output == "hi\n"  # a trailing print is not doubled
        assert s.run("x = 5\nx").output == "5\n"


def test_stdout_stderr_interleaved(pool):
    with pool.session() as s:
        r = s.run("import sys\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')")
        assert r.output == "a\nb\nc\n"


def test_input_fails_fast(pool):
    with pool.session() as s:
        r = s.run("input('name? ')", timeout=5)
        assert r.status == "error" and r.duration_s < 1.0
        assert "input() is not available" in r.output
        assert "_child.py" not in r.output  # only the cell's frames
        assert s.run("1 + 1").output == "2\n"


@pytest.mark.parametrize("code,status", [
    ("exit()", "ok"), ("quit()", "ok"), ("import sys\nsys.exit(0)", "ok"),
    ("import sys\nsys.exit(2)", "error"), ("raise SystemExit('bye')", "error")])
def test_exit_ends_only_the_cell(pool, code, status):
    with pool.session() as s:
        s.run("kept = 7")
        r = s.run(f"print('before')\n{code}\nprint('after')")
        assert r.status == status and r.output.startswith("before\n")
        assert "after" not in r.output and not r.state_reset
        assert s.run("kept").output == "7\n"


def test_huge_ints_print(pool):
    with pool.session() as s:
        r = s.run("len(str(3 ** 20000)), str(7 ** 6000)[:3]")
        assert r.status == "ok" and r.output.startswith("(9543, ")


def test_traceback_line_numbers_are_cell_relative(pool):
    with pool.session() as s:
        s.run("def g(v):\n    w = v + 1\n    return w / 0")
        r = s.run("y = 1\n\ng(y)")
        assert '"<cell-2>", line 3, in <module>' in r.output
        assert '"<cell-1>", line 3, in g' in r.output
        assert "return w / 0" in r.output


def test_syntax_error_is_a_clean_error(pool):
    with pool.session() as s:
        r = s.run("x = (1,\nprint(2")
        assert r.status == "error" and "SyntaxError" in r.output and "<cell-1>" in r.output
        assert s.run("3").output == "3\n"


def test_preloaded_modules_import_fast(pool):
    with pool.session() as s:
        r = s.run("import sympy, numpy, math, itertools, fractions\nsympy.factorint(2**32 + 1)")
        assert r.ok and r.output == "{641: 1, 6700417: 1}\n" and r.duration_s < 0.5


def test_sessions_are_isolated(pool):
    with pool.session() as a, pool.session() as b:
        a.run("secret = 42\nopen('f.txt', 'w').write('a')")
        assert "NameError" in b.run("secret").output
        assert "FileNotFoundError" in b.run("open('f.txt').read()").output
        other = a._worker.workdir  # a's directory as the pool sees it
        if not pool._uid_enabled and "filesystem" in pool.missing:
            return  # no own uid and no own view (not root): dirs are private by path only
        # b cannot reach it: outside b's filesystem view, or owned by another uid
        denied = ("PermissionError", "FileNotFoundError")
        wrote = b.run(f"open({other!r} + '/g.txt', 'w')").output
        assert any(e in wrote for e in denied) and not os.path.exists(f"{other}/g.txt")
        if pool.protections["capabilities"].in_force:  # else sessions keep CAP_DAC_READ_SEARCH
            listed = b.run(f"import os\nos.listdir({other!r})").output
            assert any(e in listed for e in denied)
        assert a.run("import os\nos.getcwd() != os.environ['HOME'] or os.listdir('.')").output \
            == "['f.txt']\n"


def test_output_truncated_head_and_tail(pool):
    with pool.session() as s:
        r = s.run("print('HEAD')\nprint('x' * 100_000)\nprint('TAIL')")
        assert r.ok and r.output.startswith("HEAD") and r.output.rstrip().endswith("TAIL")
        assert "characters of output truncated" in r.output
        assert len(r.output) < pool.config.max_output_chars + 200


def test_bad_input(pool):
    s = pool.open_session()
    with pytest.raises(TypeError):
        s.run(b"1")
    with pytest.raises(ValueError):
        s.run("1", timeout=0)
    assert s.run("").status == "error" and s.run("   \n").status == "error"
    big = s.run("#" * (pool.config.max_code_chars + 1))
    assert big.status == "error" and "limit" in big.output
    assert s.run("'\\udcff'").status == "ok"  # a lone surrogate travels fine
    s.close()
    s.close()
    with pytest.raises(SandboxClosedError):
        s.run("1")


def test_async_twin(pool):
    async def go():
        async with pool.asession() as s:
            await s.arun("z = 2")
            results = []
            async with pool.asession() as t:
                results = await asyncio.gather(s.arun("z * 3"), t.arun("'other'"))
            return results

    a, b = asyncio.run(go())
    assert a.output == "6\n" and b.output == "'other'\n"


def test_format_tool_response():
    assert format_tool_response(ExecResult("", "ok", 0.0)) == "(no output)"
    assert format_tool_response(ExecResult("a\x00b", "ok", 0.0)) == "a\\x00b"
    text = format_tool_response(ExecResult("partial", "timeout", 1.0, state_reset=True))
    assert text.startswith("partial\nTimeoutError") and "restarted" in text
    assert "crashed" in format_tool_response(ExecResult("", "crashed", 0.1, True))


@pytest.mark.parametrize("key,value", [
    ("timeout_s", 0), ("max_sessions", 0), ("memory_mb", "1G"), ("grace_s", -1),
    ("preload", "sympy"), ("max_output_chars", 10), ("no_network", 1), ("spare_workers", -1),
    ("tmp_mb", 0), ("env", "HF_TOKEN"), ("env", ["NOT-A-NAME"]), ("read_only_paths", ["rel"]),
    ("read_only_paths", ["/"]), ("require_confinement", "yes")])
def test_config_validation_names_the_key(key, value):
    with pytest.raises(ValueError, match=f"sandbox.{key}="):
        SandboxConfig(**{key: value})


def test_bad_preload_is_a_clean_error():
    pool = SandboxPool(SandboxConfig(preload=["math", "no_such_module_xyz"], spare_workers=0))
    try:
        with pytest.raises(ValueError, match="no_such_module_xyz"):
            pool.open_session()
    finally:
        pool.close()
