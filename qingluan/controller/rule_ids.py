"""Ids and priorities of the rules operators create (ACLs, steering, raw flows, IDS
policies, thresholds): one id each, and for ordered rules one priority each."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from qingluan.errors import Conflict


class Ordered(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def priority(self) -> int: ...


def next_id(prefix: str, taken: Iterable[str]) -> str:
    """The first ``prefix-N`` (N = 1, 2, ...) not in ``taken``: ids of rules made without one."""
    used = set(taken)
    n = 1
    while f"{prefix}-{n}" in used:
        n += 1
    return f"{prefix}-{n}"


def claim_id(given: str | None, prefix: str, taken: Iterable[str], what: str) -> str:
    """``given``, or the next free ``prefix-N``; ``Conflict`` if ``given`` is taken."""
    used = set(taken)
    rule_id = given or next_id(prefix, used)
    if rule_id in used:
        raise Conflict(f"{what} {rule_id} already exists")
    return rule_id


def claim_priority(priority: int, rules: Sequence[Ordered], what: str, note: str) -> None:
    """``Conflict`` if one of ``rules`` has ``priority`` already; ``note`` says why they
    are unique (e.g. "every rule has its own priority")."""
    taken = next((r for r in rules if r.priority == priority), None)
    if taken is not None:
        raise Conflict(f"priority {priority} is already {what} {taken.id}: {note}")
