"""Fixtures shared by the end-to-end tests: one whole qingluan stack per test module."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import QL, SimHost, Stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("the integration tests need root (namespaces, OVS, dockerd)")


@contextlib.contextmanager
def running_stack(prefix: str = "qle2e-", **options: Any) -> Iterator[Stack]:
    """A started Stack in a fresh work directory, closed and removed afterwards.

    Set QINGLUAN_KEEP_TEST_LOGS=1 to keep the directory (controller and driver logs).
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        s = Stack(workdir, **options).start()
        try:
            yield s
        finally:
            s.close()
    finally:
        if not os.environ.get("QINGLUAN_KEEP_TEST_LOGS"):
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


@pytest.fixture(scope="module")
def host(stack: Stack) -> SimHost:
    return stack.hosts[0]


def ip_of(host: SimHost, container: str) -> str:
    return host.docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container
    )


def create_network(host: SimHost, name: str, *opts: str) -> str:
    return host.docker("network", "create", *QL, *opts, name)


def run_sleeper(host: SimHost, name: str, network: str, *extra: str) -> str:
    host.docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        *extra,
        "qingluan/busybox",
        "sleep",
        "3600",
    )
    return ip_of(host, name)


def pings(host: SimHost, container: str, target: str, count: int = 1) -> bool:
    """Whether ``container`` gets an answer from ``target`` (bounded: ~1 s per packet)."""
    from tests.support.dockerd import DockerCommandError

    try:
        host.docker("exec", container, "ping", "-c", str(count), "-W", "1", target, timeout=30)
    except DockerCommandError:
        return False
    return True


def durations(host: SimHost) -> dict[str, float]:
    """Flow (without counters) -> seconds since the switch installed it."""
    out = {}
    for line in host.ofctl("dump-flows", "br-ql").splitlines():
        m = re.search(r"duration=([\d.]+)s", line)
        if m:
            key = re.sub(r" (duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*,", "", line)
            out[key.strip()] = float(m.group(1))
    return out
