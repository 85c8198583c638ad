"""A throwaway ovsdb-server (no ovs-vswitchd): a real Open vSwitch database for tests of
what the driver writes into it. Only the database has to take the changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ovs import SCHEMA
from tests.support.proc import wait_until

TOOLS = ("ovsdb-tool", "ovsdb-server", "ovs-vsctl")
Vsctl = Callable[..., str]


@dataclass(frozen=True)
class OvsdbServer:
    sock: Path
    vsctl: Vsctl  # ``ovs-vsctl --no-wait`` against this database

    @property
    def target(self) -> str:
        return f"unix:{self.sock}"


@contextmanager
def ovsdb_server(bridge: str = "br0") -> Iterator[OvsdbServer]:
    """A fresh database with ``bridge``; the server and its files are gone afterwards."""
    if not all(shutil.which(t) for t in TOOLS) or not SCHEMA.exists():
        pytest.skip("Open vSwitch's database tools are not installed")
    root = Path(tempfile.mkdtemp(prefix="qlt-db-"))  # short: a unix socket path
    env = {
        **os.environ,
        **{v: str(root) for v in ("OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR")},
    }
    db, sock = root / "conf.db", root / "db.sock"
    server: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            ["ovsdb-tool", "create", str(db), str(SCHEMA)],
            env=env,
            check=True,
            capture_output=True,
            timeout=10,
        )
        server = subprocess.Popen(
            [
                "ovsdb-server",
                str(db),
                f"--remote=punix:{sock}",
                f"--unixctl={root / 'ctl'}",
                f"--log-file={root / 'ovsdb-server.log'}",
                "--no-chdir",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(sock.exists, 10, "the ovsdb-server socket")

        def run(*args: str) -> str:
            proc = subprocess.run(
                ["ovs-vsctl", f"--db=unix:{sock}", "--no-wait", "--timeout=5", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert proc.returncode == 0, f"ovs-vsctl {' '.join(args)}: {proc.stderr.strip()}"
            return proc.stdout

        run("init")
        run("add-br", bridge)
        yield OvsdbServer(sock, run)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)
