"""DAPO-Math-17k as published: the upstream rows wrap every problem in their own answer
instructions ("... The last line of your response should be of the form Answer: $Answer ..."
and 'Remember to put your answer on its own line after "Answer:".'), which contradict the
boxed-answer instruction aster's user turn adds. The public reproduction (Rainyrou/ASTER)
rewrote them to the boxed form and kept the upstream text in `source_prompt`; aster does the
same when it loads them, and drops repeated problems (the upstream file repeats each one).
See docs/recipe.md, "Training prompts"."""

from __future__ import annotations

HEAD = ("Solve the following math problem step by step. The last line of your response should "
        "be of the form Answer: $Answer (without quotes) where $Answer is the answer to the "
        "problem.")
TAIL = 'Remember to put your answer on its own line after "Answer:".'


def unwrap(text: str) -> tuple[str, bool]:
    """(the problem without the upstream DAPO answer instructions, whether it carried any).
    Either instruction alone is removed too: each asks for the "Answer:" form."""
    body = text.strip()
    wrapped = False
    if body.startswith(HEAD):
        body, wrapped = body[len(HEAD):].lstrip(), True
    if body.endswith(TAIL):
        body, wrapped = body[:-len(TAIL)].rstrip(), True
    return (body, True) if wrapped else (text, False)


def source_prompt(row: dict, text: str):
    """The upstream prompt as the reproduction keeps it: the row's chat list (verl layout), or
    its text (plain layout)."""
    chat = row.get("prompt")
    return chat if isinstance(chat, list) else text


class Deduper:
    """Keeps the first row of each problem text; counts the repeats and the repeats whose
    answer differs from the kept one's (reported, never silently merged)."""

    def __init__(self):
        self.first: dict[str, tuple[int, str]] = {}  # problem -> (row, answer) kept
        self.dropped = 0
        self.conflicts: list[tuple[int, int]] = []  # (row kept, row dropped), answers differ

    def keep(self, prompt: dict, row: int) -> bool:
        seen = self.first.get(prompt["problem"])
        if seen is None:
            self.first[prompt["problem"]] = (row, prompt["answer"])
            return True
        self.dropped += 1
        if seen[1] != prompt["answer"]:
            self.conflicts.append((seen[0], row))
        return False

    def summary(self) -> str:
        pairs = ", ".join(f"{a}/{b}" for a, b in self.conflicts[:5])
        conflict = (f"; {len(self.conflicts)} of them answered otherwise than the row kept "
                    f"(rows kept/dropped {pairs}): check those labels") if self.conflicts else ""
        return f"dropped {self.dropped} repeated problems (the first row of each is kept){conflict}"
