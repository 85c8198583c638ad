"""Fixtures several unit-test modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qingluan.controller.store import SqliteStore
from tests.unit.test_services import RecordingConverger


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    """A fresh SQLite store in the test's own state directory; closed afterwards."""
    s = SqliteStore.in_state_dir(tmp_path)
    yield s
    s.close()


@pytest.fixture
def conv() -> RecordingConverger:
    return RecordingConverger()
