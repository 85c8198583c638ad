"""The controller's OpenFlow side in a child process, driven by a test.

Why a child process: os-ken keeps process-wide state (``cfg.CONF``, the
``AppManager`` singleton, its registry of service bricks) and its native hub
cannot stop the threads it started, so an os-ken inside the pytest process
could neither be stopped nor started a second time. A child process is also
exactly what a controller restart is: kill it, start a new one, and the new
``Reconciler`` knows nothing but what it dumps from the switch. It runs in
the OVS instance's namespace (``ip netns exec``), so the bridge reaches it on
that namespace's loopback.

The child (``python -m tests.support.controller``) runs the production
``start_openflow`` with a ``Reconciler`` over ``FakeState`` and answers
commands on a ``multiprocessing.connection`` unix socket: ``ControllerProcess``
is the test's side. Desired state is either the real pipeline
(``compute_bridge`` over the networks and endpoints the test sets) or a
stand-in ``BridgeState`` the test sets directly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from qingluan.controller.pipeline.acl import Policy
from qingluan.controller.pipeline.bridge import Peer
from qingluan.controller.pipeline.flow import BridgeState, CookieKind, Flow, cookie
from qingluan.errors import NotFound
from qingluan.model import Endpoint, Host, Network

REPO = Path(__file__).resolve().parents[2]
PORT_FLOW_PRIORITY = 100


# ---- the child's side ------------------------------------------------------------


class FakeState:
    """``interfaces.StateSource`` kept in memory, set by the test through commands."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hosts: dict[str, Host] = {}
        self.networks: dict[str, list[Network]] = {}
        self.endpoints: dict[str, list[Endpoint]] = {}
        self.desired: BridgeState | None = None
        self.port_flows = False

    def host_by_dpid(self, dpid: int) -> Host | None:
        with self._lock:
            return next((h for h in self.hosts.values() if h.dpid == dpid), None)

    def host_state(self, host: str) -> tuple[Host, list[Network], list[Endpoint]]:
        with self._lock:
            if host not in self.hosts:
                raise NotFound(f"host {host} is not registered")
            return (
                self.hosts[host],
                list(self.networks.get(host, [])),
                list(self.endpoints.get(host, [])),
            )

    def peers(self, host: str) -> list[Peer]:
        return []

    def policy(self) -> Policy:
        return Policy()

    def compute(
        self,
        networks: Sequence[Network],
        endpoints: Sequence[Endpoint],
        ports: Mapping[str, int],
        peers: Sequence[Peer] = (),
        policy: Policy | None = None,
    ) -> BridgeState:
        with self._lock:
            desired, port_flows = self.desired, self.port_flows
        if desired is None:
            from qingluan.controller.pipeline import compute_bridge

            return compute_bridge(networks, endpoints, ports, peers, policy)
        if not port_flows:
            return desired
        extra = {
            Flow.make(
                0,
                PORT_FLOW_PRIORITY,
                {"in_port": number},
                goto=10,
                cookie=cookie(CookieKind.ENDPOINT, name),
            )
            for name, number in ports.items()
            if number < 0xFFFFFF00
        }
        return BridgeState(desired.flows | extra, desired.groups)


def _serve(listener: Listener, state: FakeState, reconciler: Any, options: Any) -> None:
    while True:
        with listener.accept() as conn:
            while True:
                try:
                    command = conn.recv()
                except (EOFError, OSError):
                    break
                name, args = command[0], command[1:]
                if name == "quit":
                    conn.send(("ok", None))
                    return
                if name == "listen":
                    from qingluan.controller.app import start_openflow

                    try:
                        start_openflow(reconciler, options.listen_host, options.port)
                    except Exception as exc:
                        conn.send(("err", exc))
                    else:
                        conn.send(("ok", None))
                    continue
                try:
                    conn.send(("ok", _handle(name, args, state, reconciler)))
                except Exception as exc:
                    conn.send(("err", exc))


def _handle(name: str, args: tuple[Any, ...], state: FakeState, reconciler: Any) -> Any:
    if name == "set_host":
        (host,) = args
        with state._lock:
            state.hosts[host.name] = host
        return None
    if name == "set_state":
        host, networks, endpoints = args
        with state._lock:
            state.networks[host] = list(networks)
            state.endpoints[host] = list(endpoints)
            state.desired = None
        return None
    if name == "set_desired":
        desired, port_flows = args
        with state._lock:
            state.desired, state.port_flows = desired, port_flows
        return None
    if name == "converge":
        host, timeout, require_ports, full = args
        return reconciler.converge(
            host, timeout=timeout, require_ports=tuple(require_ports), full=full
        )
    if name == "dump":
        return reconciler.dump(args[0])
    if name == "metrics":
        return reconciler.metrics(args[0])
    if name == "is_connected":
        return reconciler.is_connected(args[0])
    if name == "ports":
        return reconciler.ports(args[0])
    if name == "resync_all":
        reconciler.resync_all()
        return None
    if name == "ping":
        return os.getpid()
    raise ValueError(f"unknown command {name!r}")


def main(argv: Sequence[str] | None = None) -> None:
    from qingluan.controller.reconciler import Reconciler

    parser = argparse.ArgumentParser()
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--resync", type=float, default=0.0, help="0: no periodic resync")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"
    )
    authkey = bytes.fromhex(os.environ["QLT_AUTHKEY"])
    state = FakeState()
    reconciler = Reconciler(state, state.compute, resync_interval=args.resync or None)
    # the test sets hosts and desired state first, then says "listen"
    with Listener(args.control, family="AF_UNIX", authkey=authkey) as listener:
        _serve(listener, state, reconciler, args)
    reconciler.close()
    # os-ken's native threads cannot be stopped; they are daemons, so leave now
    logging.shutdown()
    os._exit(0)


# ---- the test's side -------------------------------------------------------------


class ControllerError(RuntimeError):
    pass


class ControllerProcess:
    """Start, command and kill one controller child (bounded waits throughout)."""

    def __init__(
        self,
        port: int,
        *,
        netns: str | None = None,
        listen_host: str = "127.0.0.1",
        resync: float = 0.0,
        timeout: float = 20.0,
    ) -> None:
        self.port = port
        self.netns = netns
        self.listen_host = listen_host
        self.resync = resync
        self.timeout = timeout
        self.dir = Path(tempfile.mkdtemp(prefix="qlt-ctl-"))
        self.control = self.dir / "control.sock"
        self.log_path = self.dir / "controller.log"
        self._authkey = secrets.token_bytes(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def start(self) -> ControllerProcess:
        self.control.unlink(missing_ok=True)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        argv = [
            *prefix,
            sys.executable,
            "-m",
            "tests.support.controller",
            f"--listen-host={self.listen_host}",
            f"--port={self.port}",
            f"--control={self.control}",
            f"--resync={self.resync}",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO), "QLT_AUTHKEY": self._authkey.hex()}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.timeout
        while self._conn is None:
            if self._proc.poll() is not None:
                raise ControllerError(f"controller exited ({self._proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ControllerError(f"controller did not start in time:\n{self.log()}")
            try:  # the socket file appears at bind(), a moment before listen()
                self._conn = Client(str(self.control), family="AF_UNIX", authkey=self._authkey)
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
        self.call("ping")
        return self

    def call(self, *command: Any, timeout: float | None = None) -> Any:
        """Run one command in the child; re-raise its exception here."""
        with self._lock:
            if self._conn is None:
                raise ControllerError("controller is not running")
            self._conn.send(command)
            if not self._conn.poll(timeout or self.timeout):
                raise ControllerError(f"controller did not answer {command[0]!r}:\n{self.log()}")
            status, value = self._conn.recv()
        if status == "err":
            raise value
        return value

    # convenience wrappers
    def listen(self) -> None:
        """Start the OpenFlow listener (``start_openflow``) in the child."""
        self.call("listen")

    def set_host(self, host: Host) -> None:
        self.call("set_host", host)

    def set_desired(self, desired: BridgeState | None, *, port_flows: bool = False) -> None:
        self.call("set_desired", desired, port_flows)

    def set_state(
        self, host: str, networks: Sequence[Network], endpoints: Sequence[Endpoint]
    ) -> None:
        self.call("set_state", host, list(networks), list(endpoints))

    def converge(
        self,
        host: str,
        *,
        timeout: float = 5.0,
        require_ports: Sequence[str] = (),
        full: bool = True,
    ) -> Any:
        """``full``: read the switch back (what the tests that change it behind the
        controller's back need); False: trust the last confirmed state, as a REST change."""
        return self.call("converge", host, timeout, list(require_ports), full, timeout=timeout + 10)

    def dump(self, host: str) -> Any:
        return self.call("dump", host)

    def metrics(self, host: str) -> Any:
        return self.call("metrics", host)

    def wait_runs(self, host: str, runs: int, timeout: float = 15.0) -> Any:
        """Wait until the host has had ``runs`` reconciles (background ones included)."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = self.metrics(host)
            if metrics.runs >= runs:
                return metrics
            if time.monotonic() > deadline:
                raise ControllerError(
                    f"host {host}: {metrics.runs} of {runs} reconciles:\n{self.log()}"
                )
            time.sleep(0.05)

    def wait_connected(self, host: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.call("is_connected", host):
            if time.monotonic() > deadline:
                raise ControllerError(f"host {host} did not connect:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Ask the child to quit; kill it if it does not (it is gone when this returns)."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.send(("quit",))
                self._conn.poll(3)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(3)
        self.kill()

    def kill(self) -> None:
        """SIGKILL, like a crash (no goodbye to the switch); gone when this returns."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ControllerProcess:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


if __name__ == "__main__":
    main()
