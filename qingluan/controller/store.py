"""The controller's state: a small key/value store with transactions.

Everything the controller knows (hosts, pools, allocations, networks,
endpoints) is a JSON document under a string key; related documents share a
key prefix (``networks/``, ``pools/``...) so that ``scan(prefix)`` lists them.
The interface is deliberately what etcd offers (get, put, delete, range by
prefix, multi-key transactions), so an etcd backend can replace SQLite for a
multi-controller cluster without touching the services. No SQL leaves this
module.

``SqliteStore`` keeps one file under the state directory in WAL mode with
``synchronous=FULL``: a transaction that returned from its ``with`` block is on
disk and survives ``kill -9`` (and a power cut). One connection serves every
thread; a lock makes a transaction exclusive for its duration, so a
read-decide-write sequence inside one ``transaction()`` can never interleave
with another thread's.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

Document = dict[str, Any]
Value = Mapping[str, Any] | BaseModel

STATE_FILE = "state.db"
SCHEMA_VERSION = 1


class KeyValue(Protocol):
    """The operations available on a store and inside one of its transactions."""

    def get(self, key: str) -> Document | None:
        """The document under ``key``, or None."""

    def put(self, key: str, value: Value) -> None:
        """Create or replace the document under ``key`` (a pydantic model is dumped as JSON)."""

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""

    def scan(self, prefix: str) -> list[tuple[str, Document]]:
        """Every (key, document) whose key starts with ``prefix``, in key order."""


class Store(KeyValue, Protocol):
    """A key/value store; each plain call is its own atomic operation."""

    def transaction(self) -> AbstractContextManager[KeyValue]:
        """A context manager yielding a ``KeyValue`` whose changes commit together.

        Leaving the block normally commits; an exception rolls everything back
        and propagates. Transactions do not nest.
        """

    def close(self) -> None: ...


def _encode(value: Value) -> str:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    else:
        data = dict(value)
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _decode(raw: str) -> Document:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"stored value is not a JSON object: {raw[:80]!r}")
    return data


def _check_key(key: str) -> None:
    if not key or "\x00" in key:
        raise ValueError(f"invalid store key {key!r}")


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    The same range end etcd uses for a prefix query; None means "no upper bound".
    """
    chars = list(prefix)
    while chars:
        last = ord(chars[-1])
        if last < 0x10FFFF:
            chars[-1] = chr(last + 1)
            return "".join(chars)
        chars.pop()
    return None


class _SqliteOps:
    """get/put/delete/scan on one SQLite connection (the caller holds the lock)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, key: str) -> Document | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else _decode(row[0])

    def put(self, key: str, value: Value) -> None:
        _check_key(key)
        self._conn.execute(
            "INSERT INTO kv(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, _encode(value)),
        )

    def delete(self, key: str) -> bool:
        cur = self._conn.execute("DELETE FROM kv WHERE key = ?", (key,))
        return cur.rowcount > 0

    def scan(self, prefix: str) -> list[tuple[str, Document]]:
        end = prefix_end(prefix)
        if end is None:
            rows = self._conn.execute(
                "SELECT key, value FROM kv WHERE key >= ? ORDER BY key", (prefix,)
            ).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, end),
            ).fetchall()
        return [(key, _decode(value)) for key, value in rows]


class _Transaction:
    """The handle a ``with store.transaction() as tx`` block works on."""

    def __init__(self, ops: _SqliteOps) -> None:
        self._ops = ops
        self._open = True

    def _live(self) -> _SqliteOps:
        if not self._open:
            raise RuntimeError("transaction already finished")
        return self._ops

    def get(self, key: str) -> Document | None:
        return self._live().get(key)

    def put(self, key: str, value: Value) -> None:
        self._live().put(key, value)

    def delete(self, key: str) -> bool:
        return self._live().delete(key)

    def scan(self, prefix: str) -> list[tuple[str, Document]]:
        return self._live().scan(prefix)

    def finish(self) -> None:
        self._open = False


class SqliteStore:
    """``Store`` on one SQLite file; safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._in_transaction = False
        # isolation_level=None: no implicit transactions, we BEGIN/COMMIT ourselves.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
        )
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) "
                "WITHOUT ROWID"
            )
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: state schema version {version}, this controller "
                    f"understands {SCHEMA_VERSION}"
                )
        except BaseException:
            self._conn.close()
            raise
        if os.name == "posix":
            os.chmod(self.path, 0o600)

    @classmethod
    def in_state_dir(cls, state_dir: Path | str) -> SqliteStore:
        """The store of a controller whose ``--state-dir`` is ``state_dir``."""
        return cls(Path(state_dir) / STATE_FILE)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"store {self.path} is closed")
        return self._conn

    @contextmanager
    def _single(self) -> Iterator[_SqliteOps]:
        with self._lock:
            if self._in_transaction:
                raise RuntimeError(
                    "plain store call inside a transaction: use the transaction object"
                )
            yield _SqliteOps(self._connection())

    def get(self, key: str) -> Document | None:
        with self._single() as ops:
            return ops.get(key)

    def put(self, key: str, value: Value) -> None:
        with self._single() as ops:
            ops.put(key, value)

    def delete(self, key: str) -> bool:
        with self._single() as ops:
            return ops.delete(key)

    def scan(self, prefix: str) -> list[tuple[str, Document]]:
        with self._single() as ops:
            return ops.scan(prefix)

    @contextmanager
    def transaction(self) -> Iterator[KeyValue]:
        with self._lock:
            if self._in_transaction:
                raise RuntimeError("store transactions do not nest")
            conn = self._connection()
            # IMMEDIATE takes the write lock now, so no other writer (another
            # process on the same file) can change what this block reads.
            conn.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
            tx = _Transaction(_SqliteOps(conn))
            try:
                yield tx
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                tx.finish()
                self._in_transaction = False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- typed reads, shared by the use-case modules ----------------------------------------

M = TypeVar("M", bound=BaseModel)


def load(kv: KeyValue, key: str, cls: type[M]) -> M | None:
    """The document at ``key`` as a ``cls``, or None."""
    doc = kv.get(key)
    return None if doc is None else cls.model_validate(doc)


def load_all(kv: KeyValue, prefix: str, cls: type[M]) -> list[M]:
    """Every document under ``prefix`` as a ``cls``."""
    return [cls.model_validate(doc) for _, doc in kv.scan(prefix)]
