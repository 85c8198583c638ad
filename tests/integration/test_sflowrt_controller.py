"""The real ``qingluan controller --sflow-rt URL``: it pushes its flow definitions and
thresholds to sFlow-RT, long-polls its events and turns them into automatic steering
rules, removed once the flow is quiet.

sFlow-RT itself cannot run on this machine: the server here is a stand-in answering
with recorded sFlow-RT responses (``tests/support/sflowrt_replay.py``). Everything
on qingluan's side is real: the controller process, its REST API and its store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.proc import Proc, free_port, wait_until
from tests.support.sflowrt_replay import SflowRtReplay

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SETUP = """\
flows:
  - {name: qingluan_udp, keys: [ipsource, ipdestination, udpdestinationport],
     value: bytes, filter: "ipprotocol=17"}
thresholds:
  - {name: flood, metric: qingluan_udp, value: 1000000}
reactions:
  - {threshold: flood, action: drop, quiet_seconds: 2}
"""


class Controller:
    def __init__(self, workdir: Path, rt_url: str, setup: Path | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "qingluan", "controller", "--state-dir",
                str(workdir / "state"), "--api-port", str(self.port), "--openflow-host",
                "127.0.0.1", "--openflow-port", str(free_port()), "--sflow-port", "0",
                "--sflow-rt", rt_url]  # fmt: skip
        if setup is not None:
            argv += ["--sflow-rt-config", str(setup)]
        self.workdir = workdir
        self.proc = Proc("controller", argv, workdir / "controller.log",
                         env={"PYTHONPATH": str(REPO)})  # fmt: skip

    def get(self, path: str) -> Any:
        return httpx.get(self.url + path, timeout=10).json()

    def up(self) -> bool:
        try:
            return httpx.get(self.url + "/v1/status", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture
def rig() -> Iterator[tuple[SflowRtReplay, Controller]]:
    workdir = Path(tempfile.mkdtemp(prefix="qlrt-"))
    try:
        (workdir / "rt.yaml").write_text(SETUP)
        with SflowRtReplay() as rt:
            ctl = Controller(workdir, rt.url, workdir / "rt.yaml")
            ctl.proc.start()
            try:
                ctl.proc.wait_ready(ctl.up, timeout=30)
                yield rt, ctl
            finally:
                ctl.proc.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def auto_rules(ctl: Controller) -> list[dict[str, Any]]:
    return [r for r in ctl.get("/v1/steering") if r["id"].startswith("auto-rt-")]


def test_definitions_pushed_events_become_rules_and_quiet_ones_go(
    rig: tuple[SflowRtReplay, Controller],
) -> None:
    rt, ctl = rig
    assert rt.wait_for(lambda: "flood" in rt.thresholds and "qingluan_udp" in rt.flows, 10)
    assert rt.flows["qingluan_udp"]["keys"] == "ipsource,ipdestination,udpdestinationport"
    assert rt.thresholds["flood"]["metric"] == "qingluan_udp"
    assert rt.thresholds["flood"]["value"] == 1000000
    rt.queue_event("events_udp_flood", thresholdID="flood", metric="qingluan_udp",
                   flowKey="198.51.100.7,10.128.0.3,53")  # fmt: skip
    [rule] = wait_until(lambda: auto_rules(ctl), 10, "the automatic rule")
    assert rule["action"] == "drop" and rule["protocol"] == "udp"
    assert rule["src"] == {"cidr": "198.51.100.7/32", "network": None, "container": None,
                           "label": None}  # fmt: skip
    assert rule["dst"]["cidr"] == "10.128.0.3/32" and rule["port_min"] == 53
    assert "sflow-rt threshold flood" in rule["description"]
    metrics = httpx.get(ctl.url + "/metrics", timeout=10).text
    assert 'qingluan_threshold_events_total{source="sflow-rt",threshold="flood"} 1.0' in metrics
    wait_until(lambda: not auto_rules(ctl), 10, "the rule to go once the flow is quiet")


def test_active_flows_are_read_through_the_controller(
    rig: tuple[SflowRtReplay, Controller],
) -> None:
    rt, ctl = rig
    rt.set_active_flows("qingluan_udp", "activeflows_elephant")
    reply = httpx.get(ctl.url + "/v1/monitoring/sflow-rt/activeflows/qingluan_udp?max_flows=2",
                      timeout=10)  # fmt: skip
    assert reply.status_code == 200, reply.text
    flows = reply.json()
    assert flows[0]["parts"] == ["10.128.0.2", "10.128.0.3", "6", "5001"]
    assert flows[0]["value"] == 15311874.6 and flows[0]["agent"] == "10.77.9.1"
    [request] = [r for r in rt.requests("GET") if "/activeflows/" in r.path]
    assert request.path == "/activeflows/ALL/qingluan_udp/json"
    assert request.param("maxFlows") == "2"
    shown = subprocess.run(
        [sys.executable, "-m", "qingluan", "monitor", "rt-flows", "qingluan_udp",
         "--controller", ctl.url],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "10.128.0.2,10.128.0.3,6,5001" in shown.stdout


def test_an_event_of_an_unknown_threshold_changes_nothing(
    rig: tuple[SflowRtReplay, Controller],
) -> None:
    rt, ctl = rig
    assert rt.wait_for(lambda: "flood" in rt.thresholds, 10)
    rt.queue_event("events_udp_flood", thresholdID="someone_elses", metric="qingluan_udp",
                   flowKey="198.51.100.7,10.128.0.3,53")  # fmt: skip
    assert rt.wait_for(
        lambda: any(
            r.param("eventID") not in (None, "-1") for r in rt.requests("GET", "/events/json")
        ),
        10,
    )
    assert auto_rules(ctl) == []


def test_a_bad_setup_file_stops_the_controller_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "rt.yaml"
    bad.write_text("flows: []\nthresholds:\n  - {name: t, metric: nope, value: 1}\nreactions: []\n")
    with SflowRtReplay() as rt:
        ctl = Controller(tmp_path, rt.url, bad)
        ctl.proc.start()
        try:
            assert ctl.proc.popen is not None
            code = ctl.proc.popen.wait(timeout=30)
        finally:
            ctl.proc.stop()
        assert code != 0
        assert "threshold t: no flow 'nope'" in (tmp_path / "controller.log").read_text()
        assert rt.requests("PUT") == []
