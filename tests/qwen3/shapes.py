"""Conversation shapes real data and rollouts have, for the template tests: reasoning in every
turn, empty reasoning, none at all, reasoning_content fields, several calls in one turn, text
next to a call, a final turn without reasoning, a system turn, several user queries."""

from __future__ import annotations

from aster.data.formats import make_call
from aster.rollout.chat import user_message

USER = user_message("What is 17 * 23 + 5?")


def _asst(content: str, *codes: str, **extra) -> dict:
    msg = {"role": "assistant", "content": content, **extra}
    if codes:
        msg["tool_calls"] = [make_call(c) for c in codes]
    return msg


def _tool(text: str) -> dict:
    return {"role": "tool", "content": text}


SHAPES: dict[str, list[dict]] = {
    "prompt_only": [USER],
    "reasoning_calls_answer": [
        USER, _asst("<think>\nMultiply first.\n</think>", "x = 17 * 23\nprint(x)"), _tool("391\n"),
        _asst("<think>\nNow add.\n</think>", "print(x + 5)"), _tool("396\n"),
        _asst("<think>\nDone.\n</think>\n\nThe answer is \\boxed{396}.")],
    "empty_reasoning_turns": [
        USER, _asst("<think>\n\n</think>", "x = 17 * 23\nprint(x)"), _tool("391\n"),
        _asst("<think>\nAdd 5.\n</think>", "print(x + 5)"), _tool("396\n"),
        _asst("<think>\n\n</think>\n\n\\boxed{396}")],
    "no_reasoning_anywhere": [
        USER, _asst("", "x = 17 * 23\nprint(x)"), _tool("391\n"),
        _asst("The answer is \\boxed{396}.")],
    "text_next_to_calls_and_parallel_calls": [
        USER, _asst("<think>\nTwo cells.\n</think>\n\nLet me run both.", "a = 17", "print(a * 23)"),
        _tool("(no output)"), _tool("391\n"),
        _asst("<think>\nok\n</think>\n\n\\boxed{396}")],
    "reasoning_content_field": [
        USER, _asst("", "x = 17 * 23\nprint(x)", reasoning_content="Multiply first."),
        _tool("391\n"), _asst("\\boxed{396}", reasoning_content="Add 5: 396.")],
    "system_and_two_queries": [
        {"role": "system", "content": "You are a careful mathematician."}, USER,
        _asst("<think>\nMultiply.\n</think>", "print(17 * 23)"), _tool("391\n"),
        _asst("<think>\nSo 391 + 5.\n</think>\n\n\\boxed{396}"),
        user_message("And 396 * 2?"),
        _asst("<think>\nDouble it.\n</think>", "print(396 * 2)"), _tool("792\n"),
        _asst("<think>\n\n</think>\n\n\\boxed{792}")],
    "tool_error_output": [
        USER, _asst("<think>\nTry.\n</think>", "print(y)"),
        _tool("Traceback (most recent call last):\nNameError: name 'y' is not defined"),
        _asst("<think>\nDefine y.\n</think>", "y = 17 * 23 + 5\nprint(y)"), _tool("396\n"),
        _asst("<think>\nDone.\n</think>\n\n\\boxed{396}")],
}
