"""A clock that tests move by hand (``clock.now += 5``), for code that takes ``clock=``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now
