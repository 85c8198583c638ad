"""Visibility and intrusion detection on two hosts, with real Suricata, real sFlow from
Open vSwitch and pmacct's sfacctd as an independent collector.

One vxlan network ``vx`` with ``--opt ids=true`` on h1 and h2 (both drivers run
``--ids suricata``): ``a1`` and ``a2`` (busybox) on h1, ``web`` (busybox httpd on
8080) and ``perf`` (iperf3 server) on h2. A nat network ``plain`` on h1 without
inspection, with ``p1`` and ``p2``. The IDS rules are qingluan's shipped examples:
sid 9000002 fires for an HTTP request whose URI has ``/qingluan-ids-test``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.conftest import ip_of, pings, run_sleeper, running_stack
from tests.support.dockerd import DockerCommandError
from tests.support.proc import free_port, wait_until
from tests.support.sfacctd import Sfacctd, totals
from tests.support.stack import QL, SimHost, Stack, cli

pytestmark = pytest.mark.integration

VX = (
    "--opt", "model=vxlan", "--opt", "vni=5100", "--opt", "ids=true",
    "--ipam-opt", "pool=vxlan", "--ipam-opt", "vni=5100",
)  # fmt: skip
HTTP_SID = 9000002
WEB_PORT = 8080
SAMPLING = 64


@dataclass
class Rig:
    stack: Stack
    ips: dict[str, str] = field(default_factory=dict)

    def host(self, name: str) -> SimHost:
        return self.stack.host(name)

    def cli(self, *args: str, token: bool = True) -> str:
        extra = ("--token-file", str(self.stack.token_file)) if token else ()
        done = cli(self.stack, *args, *extra)
        if done.returncode != 0:
            raise AssertionError(f"qingluan {' '.join(args)}: {done.stderr}")
        return done.stdout

    def send(self, method: str, path: str, body: object = None) -> Any:
        response = self.stack.request(method, path, body)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.stack.get("/v1/ids/alerts?limit=200"))

    def http_alerts_from(self, ip: str) -> list[dict[str, Any]]:
        return [
            o
            for o in self.alerts()
            if o["alert"]["signature_id"] == HTTP_SID and o["alert"]["src_ip"] == ip
        ]


def fetch(host: SimHost, container: str, ip: str, path: str = "/qingluan-ids-test") -> bool:
    """An HTTP GET from ``container`` over busybox nc (its wget crashes in this image);
    True when the server answered (404 is an answer too; bounded: 3 s)."""
    request = f"printf 'GET {path} HTTP/1.0\\r\\nHost: {ip}\\r\\n\\r\\n' | nc -w 3 {ip} {WEB_PORT}"
    try:
        out = host.docker("exec", container, "sh", "-c", request, timeout=20)
    except DockerCommandError:
        return False
    return out.startswith("HTTP/")


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with running_stack("qlvis-", host_names=("h1", "h2"), underlay=True, ids=True) as s:
        r = Rig(s)
        h1, h2 = s.hosts
        for h in (h1, h2):
            h.docker("network", "create", *QL, *VX, "vx")
        h1.docker("network", "create", *QL, "--opt", "model=nat", "--ipam-opt", "pool=nat",
                  "plain")  # fmt: skip
        r.ips["a1"] = run_sleeper(h1, "a1", "vx")
        r.ips["a2"] = run_sleeper(h1, "a2", "vx")
        r.ips["p1"] = run_sleeper(h1, "p1", "plain")
        h2.docker("run", "-d", "--name", "web", "--network", "vx", "qingluan/busybox",
                  "httpd", "-f", "-p", str(WEB_PORT), "-h", "/")  # fmt: skip
        r.ips["web"] = ip_of(h2, "web")
        h1.docker("run", "-d", "--name", "pweb", "--network", "plain", "qingluan/busybox",
                  "httpd", "-f", "-p", str(WEB_PORT), "-h", "/")  # fmt: skip
        r.ips["pweb"] = ip_of(h1, "pweb")
        h2.docker("run", "-d", "--name", "perf", "--network", "vx", "qingluan/iperf3",
                  "iperf3", "-s", "--forceflush")  # fmt: skip
        r.ips["perf"] = ip_of(h2, "perf")
        wait_until(lambda: "listening" in h2.docker("logs", "perf"), 20, "iperf3 -s")
        for h in (h1, h2):  # Suricata up on both hosts (its EVE socket connected)
            wait_until(lambda h=h: "Engine started" in (h.workdir / "driver.log").read_text(),
                       60, f"Suricata on {h.name}")  # fmt: skip
        wait_until(
            lambda: (
                {e["container_name"] for e in s.get("/v1/endpoints")}
                >= {"a1", "a2", "web", "perf", "p1", "pweb"}
            ),
            30,
            "container names at the controller",
        )
        yield r


@pytest.fixture
def policy(rig: Rig) -> Iterator[Rig]:
    """Every policy and quarantine a test made is gone afterwards."""
    try:
        yield rig
    finally:
        for p in rig.stack.get("/v1/ids/policies"):
            rig.send("DELETE", f"/v1/ids/policies/{p['id']}")
        for q in rig.stack.get("/v1/quarantines"):
            rig.send("DELETE", f"/v1/quarantines/{q['id']}")


# ---- the mirror ---------------------------------------------------------------------


def test_inspected_networks_are_mirrored_to_the_ids_port_only(rig: Rig) -> None:
    for h in rig.stack.hosts:
        dump = h.ofctl("dump-flows", "br-ql", "--no-stats")
        mirrors = [line for line in dump.splitlines() if "table=10" in line and "output:" in line]
        assert len(mirrors) == 1, mirrors  # vx only; plain is not inspected
        assert "qlids0" in h.sh("ovs-vsctl", f"--db=unix:{h.ovs.sock}", "list-ports", "br-ql")


def test_a_request_on_an_uninspected_network_raises_no_alert(rig: Rig) -> None:
    h1 = rig.host("h1")
    assert fetch(h1, "p1", rig.ips["pweb"])
    time.sleep(2)
    assert rig.http_alerts_from(rig.ips["p1"]) == []


# ---- alerts and quarantines -------------------------------------------------------------


def test_without_a_policy_an_alert_is_logged_and_nothing_is_blocked(policy: Rig) -> None:
    h1 = policy.host("h1")
    before = len(policy.http_alerts_from(policy.ips["a2"]))
    assert fetch(h1, "a2", policy.ips["web"])
    wait_until(lambda: len(policy.http_alerts_from(policy.ips["a2"])) > before, 20,
               "the HTTP alert at the controller")  # fmt: skip
    outcome = policy.http_alerts_from(policy.ips["a2"])[0]
    assert outcome["action"] == "log" and outcome["alert"]["severity"] == 2
    assert outcome["alert"]["dest_ip"] == policy.ips["web"]
    assert outcome["alert"]["dest_port"] == WEB_PORT
    assert policy.stack.get("/v1/quarantines") == []
    assert pings(h1, "a2", policy.ips["web"])


def test_an_alert_quarantines_the_sender_within_the_bound_and_only_it(policy: Rig) -> None:
    h1, h2 = policy.host("h1"), policy.host("h2")
    policy.cli("ids", "policy", "add", "--max-severity", "2", "--action", "quarantine",
               "--duration", "0")  # fmt: skip
    assert fetch(h1, "a1", policy.ips["web"])
    wait_until(lambda: policy.stack.get("/v1/quarantines"), 20, "a quarantine")
    [q] = policy.stack.get("/v1/quarantines")
    assert q["address"] == policy.ips["a1"] and q["host"] == "h1" and q["scope"] == "endpoint"
    # alert received -> drop flow confirmed by the bridge
    assert q["confirm_seconds"] is not None and q["confirm_seconds"] < 0.5, q
    assert not pings(h1, "a1", policy.ips["web"])
    assert not pings(h1, "a1", policy.ips["a2"])  # everything it sends, same host too
    assert pings(h1, "a2", policy.ips["web"])  # the others are unaffected
    assert pings(h2, "web", policy.ips["a2"])
    assert "table=10" in h1.ofctl("dump-flows", "br-ql", f"dl_src={q['mac']}")
    listed = policy.cli("quarantine", "ls", token=False)
    assert q["id"] in listed and policy.ips["a1"] in listed
    policy.cli("quarantine", "rm", q["id"])  # lifted on request
    assert policy.stack.get("/v1/quarantines") == []
    assert pings(h1, "a1", policy.ips["web"])


def test_a_quarantine_survives_a_controller_kill_9_and_still_lifts(policy: Rig) -> None:
    h1, s = policy.host("h1"), policy.stack
    policy.cli("ids", "policy", "add", "--signature", str(HTTP_SID), "--action", "quarantine",
               "--duration", "0")  # fmt: skip
    assert fetch(h1, "a1", policy.ips["web"])
    [q] = wait_until(lambda: s.get("/v1/quarantines"), 20, "a quarantine")
    assert s.controller is not None
    s.controller.kill9()
    assert not pings(h1, "a1", policy.ips["web"])  # the bridge keeps the drop on its own
    assert pings(h1, "a2", policy.ips["web"])
    s.start_controller()
    wait_until(lambda: s.host_connected("h1") and s.host_connected("h2"), 30, "reconnect")
    assert [x["id"] for x in s.get("/v1/quarantines")] == [q["id"]]
    reply = s.request("POST", "/v1/hosts/h1/reconcile")  # the bridge already holds it all
    assert reply.status_code == 200 and reply.json()["flows_added"] == 0, reply.text
    assert not pings(h1, "a1", policy.ips["web"])
    policy.cli("quarantine", "rm", q["id"])
    assert pings(h1, "a1", policy.ips["web"])


def test_a_quarantine_lifts_on_time(policy: Rig) -> None:
    h1 = policy.host("h1")
    policy.cli("ids", "policy", "add", "--signature", str(HTTP_SID), "--action", "quarantine",
               "--duration", "3")  # fmt: skip
    assert fetch(h1, "a1", policy.ips["web"])
    wait_until(lambda: policy.stack.get("/v1/quarantines"), 20, "a quarantine")
    assert not pings(h1, "a1", policy.ips["web"])
    wait_until(lambda: policy.stack.get("/v1/quarantines") == [], 10, "the quarantine to end")
    assert pings(h1, "a1", policy.ips["web"])


def test_a_flow_quarantine_drops_only_the_offending_flow(policy: Rig) -> None:
    h1 = policy.host("h1")
    policy.cli("ids", "policy", "add", "--signature", str(HTTP_SID), "--action", "quarantine",
               "--scope", "flow", "--duration", "0")  # fmt: skip
    assert fetch(h1, "a2", policy.ips["web"])
    wait_until(lambda: policy.stack.get("/v1/quarantines"), 20, "a quarantine")
    [q] = policy.stack.get("/v1/quarantines")
    assert q["scope"] == "flow" and q["protocol"] == "tcp" and q["dst_port"] == WEB_PORT
    assert pings(h1, "a2", policy.ips["web"])  # ICMP still passes
    # the quarantine names the alert's source port: a new connection uses another one
    dump = h1.ofctl("dump-flows", "br-ql", "table=10")
    assert f"tp_dst={WEB_PORT}" in dump or f"tcp_dst={WEB_PORT}" in dump, dump


def test_suricata_dying_breaks_no_traffic_and_comes_back(policy: Rig) -> None:
    h1 = policy.host("h1")
    pid_file = h1.ids_dir / "suricata" / "suricata.pid"
    old = int(pid_file.read_text().strip())
    subprocess.run(["kill", "-9", str(old)], check=True, timeout=5)
    assert pings(h1, "a2", policy.ips["web"])  # no IDS: traffic goes on
    wait_until(
        lambda: pid_file.exists() and pid_file.read_text().strip() not in ("", str(old)),
        20,
        "Suricata restarted",
    )
    before = len(policy.http_alerts_from(policy.ips["a2"]))

    def alerted() -> bool:
        fetch(h1, "a2", policy.ips["web"])
        return len(policy.http_alerts_from(policy.ips["a2"])) > before

    wait_until(alerted, 40, "an alert from the restarted Suricata", interval=2.0)


def test_inspection_turned_off_and_on_through_the_cli(policy: Rig) -> None:
    h1, h2 = policy.host("h1"), policy.host("h2")

    def mirrored(h: SimHost) -> bool:
        return "output:" in h.ofctl("dump-flows", "br-ql", "table=10")

    policy.cli("ids", "off", "vx")  # every host's network of that name
    try:
        assert not mirrored(h1) and not mirrored(h2)
        before = len(policy.http_alerts_from(policy.ips["a2"]))
        assert fetch(h1, "a2", policy.ips["web"])
        time.sleep(2)
        assert len(policy.http_alerts_from(policy.ips["a2"])) == before
    finally:
        policy.cli("ids", "on", "vx")
    assert mirrored(h1) and mirrored(h2)


# ---- sFlow ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled(rig: Rig) -> Iterator[tuple[Rig, Sfacctd]]:
    """sFlow at 1-in-64 to the embedded collector and to sfacctd at once."""
    s = rig.stack
    port = free_port()
    with Sfacctd(s.workdir / "sfacctd", port, ip=s.mgmt_ip) as acct:
        targets = [f"{s.mgmt_ip}:{s.sflow_port}", f"{s.mgmt_ip}:{port}"]
        rig.cli("monitor", "settings", "--sampling", str(SAMPLING), "--polling", "2",
                *[a for t in targets for a in ("--sflow-target", t)])  # fmt: skip
        for h in s.hosts:
            wait_until(
                lambda h=h: re.search(rf"sampling\s*:\s*{SAMPLING}\b", ovsdb_list(h, "sflow")),
                15,
                f"sFlow settings on {h.name}",
            )
        try:
            yield rig, acct
        finally:
            rig.send("PUT", "/v1/monitoring/settings", {})


def ovsdb_list(host: SimHost, table: str) -> str:
    assert host.ovs is not None
    return host.sh("ovs-vsctl", f"--db=unix:{host.ovs.sock}", "list", table)


def iperf(rig: Rig, *args: str) -> dict[str, Any]:
    out = rig.host("h1").docker(
        "run", "--rm", "--network", "vx", "qingluan/iperf3", "iperf3", "-c", rig.ips["perf"],
        "--json", "--connect-timeout", "5000", *args, timeout=90,
    )  # fmt: skip
    return dict(json.loads(out))


def test_bytes_of_an_iperf3_transfer_are_reported_within_tolerance(
    sampled: tuple[Rig, Sfacctd],
) -> None:
    """20 MB over TCP from h1 to perf on h2, sampled 1-in-64: the embedded collector's
    estimate is within 25 % of the bytes iperf3 moved, and within 10 % of sfacctd's
    estimate of the same samples. Paced at 100 Mbit/s: unpaced, the userspace datapath
    drops part of what enters the sender's bridge, and the retransmissions are bytes
    sFlow rightly sees but iperf3 does not count."""
    rig, acct = sampled
    sent = int(iperf(rig, "-n", "20M", "-b", "100M")["end"]["sum_sent"]["bytes"])

    def ours() -> int:
        flows = rig.stack.get("/v1/monitoring/flows?host=h1&limit=50&endpoint=perf&window=60")
        return sum(f["bytes"] for f in flows if f["ipv4_dst"] == rig.ips["perf"]
                   and f["dst_port"] == 5201)  # fmt: skip

    wait_until(lambda: ours() > 0.75 * sent, 15, "the transfer in the embedded collector")
    time.sleep(3)  # the last datagrams, and sfacctd's next print
    estimate = ours()
    assert 0.75 * sent <= estimate <= 1.25 * sent, (estimate, sent)
    theirs = sum(
        f.bytes
        for f in totals(acct.flows())
        if f.dst_ip == rig.ips["perf"] and f.dst_port == 5201 and f.src_ip != rig.ips["perf"]
    )
    # both collectors get h1's and h2's samples of the flow; ours is h1's only
    assert theirs > 0
    flows = rig.stack.get("/v1/monitoring/flows?limit=100&window=60")
    both = sum(
        f["bytes"] for f in flows if f["ipv4_dst"] == rig.ips["perf"] and f["dst_port"] == 5201
    )
    assert 0.9 <= both / theirs <= 1.1, (both, theirs)
    [view] = [f for f in flows if f["host"] == "h1" and f["ipv4_dst"] == rig.ips["perf"]
              and f["dst_port"] == 5201][:1]  # fmt: skip
    assert view["network"] == "vx" and view["container_dst"] == "perf"


def test_interface_rates_and_prometheus_metrics(sampled: tuple[Rig, Sfacctd]) -> None:
    rig, _ = sampled
    perf = next(e for e in rig.stack.get("/v1/endpoints") if e["container_name"] == "perf")
    wait_until(
        lambda: any(i.get("container") == "perf" for i in rig.stack.get(
            "/v1/monitoring/interfaces")),
        15,
        "perf's port in the counter samples",
    )  # fmt: skip
    text = rig.stack.request("GET", "/metrics").text
    line = next(
        ln for ln in text.splitlines()
        if ln.startswith("qingluan_endpoint_received_bytes_total{") and perf["id"][:12] in ln
    )  # fmt: skip
    assert 'container="perf"' in line and float(line.rsplit(" ", 1)[1]) > 10e6
    assert 'qingluan_bridge_connected{host="h1"} 1.0' in text
    assert 'qingluan_sflow_datagrams_total{host="h1"}' in text
    assert "qingluan_reconcile_duration_seconds_count" in text


def test_an_embedded_threshold_drops_a_flood_and_lets_go_when_it_ends(
    sampled: tuple[Rig, Sfacctd],
) -> None:
    rig, _ = sampled
    rig.cli("monitor", "threshold", "add", "--id", "flood", "--value", "500000",
            "--protocol", "udp", "--action", "drop", "--quiet", "3")  # fmt: skip
    try:
        result = iperf(rig, "-u", "-b", "40M", "-t", "6")
        rules = [r for r in rig.stack.get("/v1/steering") if r["id"].startswith("auto-")]
        sent = float(result["end"]["sum_sent"]["bytes"])
        received = float(result["end"]["sum_received"]["bytes"])
        assert received < 0.7 * sent, (received, sent)  # dropped for most of the run
        assert rules and rules[0]["action"] == "drop", rules
        assert rules[0]["dst"]["cidr"] == f"{rig.ips['perf']}/32"
        wait_until(
            lambda: not [r for r in rig.stack.get("/v1/steering") if r["id"].startswith("auto-")],
            20,
            "the automatic rule to go once the flood stopped",
        )
    finally:
        rig.send("DELETE", "/v1/monitoring/thresholds/flood")
    assert pings(rig.host("h1"), "a2", rig.ips["perf"])


def test_netflow_and_ipfix_export_on_request(rig: Rig) -> None:
    h1 = rig.host("h1")
    rig.cli("monitor", "settings", "--netflow-target", "127.0.0.1:2055", "--ipfix-target",
            "127.0.0.1:4739")  # fmt: skip
    try:
        wait_until(lambda: '"127.0.0.1:2055"' in ovsdb_list(h1, "netflow"), 15, "NetFlow")
        wait_until(lambda: '"127.0.0.1:4739"' in ovsdb_list(h1, "ipfix"), 15, "IPFIX")
    finally:
        rig.send("PUT", "/v1/monitoring/settings", {})
    wait_until(lambda: ovsdb_list(h1, "netflow").strip() == "", 15, "NetFlow off again")


def test_bad_monitoring_input_is_refused_and_changes_nothing(rig: Rig) -> None:
    before = rig.stack.get("/v1/monitoring/settings")
    for body, field_name in (
        ({"sflow": {"sampling": 0}}, "sflow.sampling"),
        ({"sflow": {"targets": ["nowhere"]}}, "sflow.targets"),
        ({"netflow": {"targets": ["10.0.0.1:99999"]}}, "netflow.targets"),
    ):
        response = rig.stack.request("PUT", "/v1/monitoring/settings", body)
        assert response.status_code == 422 and field_name in response.json()["error"]
    response = rig.stack.request(
        "POST", "/v1/ids/policies", {"action": "quarantine", "max_severity": 0}
    )
    assert response.status_code == 422 and "max_severity" in response.json()["error"]
    response = rig.stack.request(
        "POST", "/v1/monitoring/thresholds", {"value": 10, "action": "rate_limit"}
    )
    assert response.status_code == 422 and "rate_kbps" in response.json()["error"]
    assert rig.stack.get("/v1/monitoring/settings") == before
    assert rig.stack.get("/v1/ids/policies") == []
    assert rig.stack.get("/v1/monitoring/thresholds") == []
