"""The SQLite store: real files in tmp_path, as the controller uses them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from qingluan.controller.store import STATE_FILE, SqliteStore, prefix_end
from qingluan.model import Pool


def test_get_put_delete(store: SqliteStore) -> None:
    assert store.get("a/1") is None
    store.put("a/1", {"x": 1})
    assert store.get("a/1") == {"x": 1}
    store.put("a/1", {"x": 2})
    assert store.get("a/1") == {"x": 2}
    assert store.delete("a/1") is True
    assert store.delete("a/1") is False
    assert store.get("a/1") is None


def test_pydantic_models_are_stored_as_json(store: SqliteStore) -> None:
    pool = Pool(id="nat_10.128.0.0_24", name="nat", subnet="10.128.0.0/24", user_subnet=False)
    store.put("pools/" + pool.id, pool)
    assert Pool.model_validate(store.get("pools/" + pool.id)) == pool


def test_scan_is_by_prefix_in_key_order(store: SqliteStore) -> None:
    for key in ("b/2", "a/2", "a/1", "ab/1", "a"):
        store.put(key, {"k": key})
    assert [k for k, _ in store.scan("a/")] == ["a/1", "a/2"]
    assert [k for k, _ in store.scan("")] == ["a", "a/1", "a/2", "ab/1", "b/2"]
    assert store.scan("c/") == []


def test_prefix_end() -> None:
    assert prefix_end("a/") == "a0"
    assert prefix_end("") is None


def test_transaction_commits_together(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.put("t/1", {"v": 1})
        tx.put("t/2", {"v": 2})
        assert tx.get("t/1") == {"v": 1}  # sees its own writes
    assert [k for k, _ in store.scan("t/")] == ["t/1", "t/2"]


def test_transaction_rolls_back_on_exception(store: SqliteStore) -> None:
    store.put("t/keep", {"v": 0})
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.put("t/1", {"v": 1})
        tx.delete("t/keep")
        raise RuntimeError("boom")
    assert store.get("t/1") is None
    assert store.get("t/keep") == {"v": 0}


def test_transactions_do_not_nest_and_handles_expire(store: SqliteStore) -> None:
    with store.transaction() as tx:
        with pytest.raises(RuntimeError, match="nest"), store.transaction():
            pass
        with pytest.raises(RuntimeError, match="inside a transaction"):
            store.put("x", {})
        kept = tx
    with pytest.raises(RuntimeError, match="finished"):
        kept.get("x")
    # the store still works after those refusals
    store.put("x", {"ok": True})
    assert store.get("x") == {"ok": True}


def test_transactions_are_exclusive_between_threads(store: SqliteStore) -> None:
    """Read-increment-write in transactions from many threads loses no update."""
    store.put("counter", {"n": 0})

    def bump() -> None:
        for _ in range(50):
            with store.transaction() as tx:
                doc = tx.get("counter")
                assert doc is not None
                tx.put("counter", {"n": doc["n"] + 1})

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("counter") == {"n": 400}


def test_reopen_keeps_data(tmp_path: Path) -> None:
    with SqliteStore.in_state_dir(tmp_path) as first:
        with first.transaction() as tx:
            tx.put("hosts/h1", {"name": "h1"})
        first.put("hosts/h2", {"name": "h2"})
    with SqliteStore.in_state_dir(tmp_path) as second:
        assert [k for k, _ in second.scan("hosts/")] == ["hosts/h1", "hosts/h2"]
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o600


def test_closed_store_refuses(tmp_path: Path) -> None:
    s = SqliteStore.in_state_dir(tmp_path)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.get("x")


def test_committed_transaction_survives_kill_9(tmp_path: Path) -> None:
    """A process that committed and then died by SIGKILL left the data on disk."""
    script = f"""
import os, signal
from qingluan.controller.store import SqliteStore
s = SqliteStore.in_state_dir({str(tmp_path)!r})
with s.transaction() as tx:
    tx.put("a", {{"v": 1}})
    tx.put("b", {{"v": 2}})
os.kill(os.getpid(), signal.SIGKILL)
"""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, check=False)
    assert proc.returncode == -signal.SIGKILL
    with SqliteStore.in_state_dir(tmp_path) as s:
        assert s.get("a") == {"v": 1}
        assert s.get("b") == {"v": 2}


def test_bad_keys_are_refused(store: SqliteStore) -> None:
    with pytest.raises(ValueError):
        store.put("", {})
    with pytest.raises(ValueError):
        store.put("a\x00b", {})
