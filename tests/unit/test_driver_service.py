"""The driver process: sockets first, start-up sync in the background, retried until it works."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qingluan.driver.service import Driver, DriverConfig
from qingluan.errors import Unavailable
from qingluan.model import MonitoringSettings
from tests.unit.test_driver_handlers import FakeController, FakeHost
from tests.unit.test_driver_server import post


def _listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


@contextmanager
def running(driver: Driver) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(driver.run(stop)))
    thread.start()
    deadline = time.monotonic() + 10
    while not _listening(driver.config.network_socket):  # the file exists before listen()
        assert time.monotonic() < deadline, "no socket"
        time.sleep(0.01)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
        assert not thread.is_alive()


def make(tmp_path: Path) -> tuple[Driver, FakeController, FakeHost]:
    ctl, host = FakeController(), FakeHost()
    cfg = DriverConfig(
        host="node1",
        plugin_dir=tmp_path / "plugins",
        startup_wait=0.3,
        retry_max=0.2,
    )
    return Driver(cfg, controller=ctl, host_ops=host), ctl, host


def test_startup_registers_then_sweeps(tmp_path):
    driver, ctl, host = make(tmp_path)
    with running(driver):
        deadline = time.monotonic() + 5
        while not driver.guard.ready:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert host.names()[:2] == ["ensure_bridge", "sweep"]
        reg = next(arg for name, arg in ctl.calls if name == "register_host")
        assert (reg.dpid, reg.bridge, reg.datapath_type.value) == (1, "br-ql", "netdev")  # type: ignore[attr-defined]
        assert ctl.names().index("register_host") < ctl.names().index("list_networks")
    assert not driver.config.network_socket.exists()
    assert not driver.config.ipam_socket.exists()


def test_calls_fail_clearly_until_the_controller_is_back(tmp_path):
    driver, ctl, _ = make(tmp_path)
    ctl.fail["register_host"] = Unavailable(
        "the qingluan controller at http://127.0.0.1:6680 is not reachable"
    )
    with running(driver):
        sock = driver.config.network_socket
        # the sockets answer at once, even while start-up is stuck
        assert post(sock, "Plugin.Activate") == (200, {"Implements": ["NetworkDriver"]})
        deadline = time.monotonic() + 5
        while "register_host" not in ctl.names():  # the first attempt has been made
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ids = {"NetworkID": "n" * 64, "EndpointID": "e" * 64}
        status, body = post(sock, "NetworkDriver.DeleteEndpoint", ids)
        assert status == 503
        assert "not ready: the qingluan controller at http://127.0.0.1:6680" in str(body["Err"])
        del ctl.fail["register_host"]
        deadline = time.monotonic() + 5
        while not driver.guard.ready:
            assert time.monotonic() < deadline, "start-up was not retried"
            time.sleep(0.05)
        assert post(sock, "NetworkDriver.DeleteEndpoint", ids) == (200, {})
    assert ctl.names().count("register_host") >= 2


def test_monitoring_settings_are_applied_once_then_only_when_they_change(tmp_path):
    driver, ctl, host = make(tmp_path)
    driver.sync_once()
    applied = [arg for name, arg in host.calls if name == "apply_monitoring"]
    assert applied == [(MonitoringSettings(), driver.config.controller_url, None)]
    assert driver.sync_monitoring() and driver.sync_once()
    assert len([n for n in host.names() if n == "apply_monitoring"]) == 1  # unchanged
    ctl.settings = MonitoringSettings.model_validate({"sflow": {"sampling": 64}})
    assert driver.sync_monitoring()
    last = [arg for name, arg in host.calls if name == "apply_monitoring"][-1]
    assert last[0].sflow.sampling == 64  # type: ignore[index]


def test_monitoring_settings_that_cannot_be_read_change_nothing(tmp_path):
    driver, ctl, host = make(tmp_path)
    ctl.fail["monitoring_settings"] = Unavailable("the controller is away")
    assert driver.sync_monitoring() is False
    assert "apply_monitoring" not in host.names()
    del ctl.fail["monitoring_settings"]
    assert driver.sync_monitoring() and "apply_monitoring" in host.names()


def test_with_ids_every_sync_ensures_the_mirror_port(tmp_path):
    ctl, host = FakeController(), FakeHost()
    cfg = DriverConfig(host="node1", plugin_dir=tmp_path / "plugins", ids="snort",
                       ids_dir=tmp_path / "ids")  # fmt: skip
    driver = Driver(cfg, controller=ctl, host_ops=host)
    driver.sync_once()
    driver.sync_once()
    assert host.names().count("ensure_ids_port") == 2
    assert driver.ids is not None and driver.ids.kind == "snort"
