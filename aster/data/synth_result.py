"""SynthResult: what teacher synthesis yields per (prompt, sample), shared by the synthesis
loop (synth.py) and the teachers that produce it (synth_http.py, synth_engine.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SynthResult:
    """One finished (prompt, sample): an SFT example, or the reason it cannot be one."""

    prompt: dict
    sample: int
    finish_reason: str
    example: dict | None = None
    reason: str | None = None  # why rejected
    text: str = ""  # the raw response text of a rejected trajectory
