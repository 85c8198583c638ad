"""The reconciler and the os-ken app against a real Open vSwitch.

Each test gets its own network namespace with its own ovsdb-server and
ovs-vswitchd (``tests.support.ovs``) and a controller child process in that
namespace (``tests.support.controller``: the production ``start_openflow``
with a ``Reconciler``). The bridge is netdev, ``fail_mode=secure``,
OpenFlow 1.3, connected to the child on the namespace's loopback.

What the bridge holds is checked with OVS's own tools: ``ovs-ofctl
diff-flows`` against the desired flows rendered in ovs-ofctl syntax, and
``dump-groups``. Packets for the counter checks are injected with
``ovs-ofctl packet-out``, so no veth is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qingluan import names
from qingluan.api_schema import ReconcileResult
from qingluan.controller import ofvocab
from qingluan.controller.pipeline import compute_bridge
from qingluan.controller.pipeline.flow import (
    NETWORK_KEY_MASK,
    OFPP_IN_PORT,
    BridgeState,
    CookieKind,
    Flow,
    Group,
    GroupAction,
    MatchValue,
    Move,
    Output,
    SetField,
    cookie,
)
from qingluan.controller.pipeline.tables import Table
from qingluan.controller.reconciler import SwitchRejected
from qingluan.errors import Timeout, Unavailable
from qingluan.model import DatapathType, Endpoint, Host, Network, NetworkModel
from tests.support.controller import ControllerProcess
from tests.support.ovs import Netns, OvsInstance, free_port, ovs_in_netns, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ovs-vswitchd") is None,
        reason="needs root and Open vSwitch",
    ),
]

HOST = Host(name="h1", dpid=0x51, bridge="brql", datapath_type=DatapathType.NETDEV)
BR = HOST.bridge
KEY = 5
META = (KEY, NETWORK_KEY_MASK)
GW_MAC = "02:00:00:00:00:09"
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
# an IPv4 frame from port 1 (MAC1) to MAC2, 10.0.0.2 -> 10.0.0.3
PACKET = (
    MAC2.replace(":", "")
    + MAC1.replace(":", "")
    + "0800"
    + "4500001400010000400100000a0000020a000003"
)


def base_state() -> BridgeState:
    """A small pipeline in the declared tables, with every kind of action and mask."""
    flows = [
        Flow.make(Table.CLASSIFY, 0, {}, cookie=cookie(CookieKind.BASE, 0)),
        Flow.make(Table.QUARANTINE, 0, {}, goto=Table.ACL, cookie=cookie(CookieKind.BASE, 1)),
        Flow.make(Table.ACL, 0, {}, goto=Table.STEERING, cookie=cookie(CookieKind.BASE, 2)),
        Flow.make(Table.STEERING, 0, {}, goto=Table.ARP, cookie=cookie(CookieKind.BASE, 3)),
        Flow.make(Table.ARP, 0, {}, goto=Table.L2, cookie=cookie(CookieKind.BASE, 4)),
        Flow.make(Table.L2, 0, {}, cookie=cookie(CookieKind.BASE, 5)),
        Flow.make(
            Table.CLASSIFY,
            100,
            {"in_port": 1, "eth_src": MAC1},
            write_metadata=META,
            goto=Table.QUARANTINE,
            cookie=cookie(CookieKind.ENDPOINT, "ep1"),
        ),
        Flow.make(
            Table.CLASSIFY,
            100,
            {"in_port": 2, "eth_src": MAC2, "eth_type": 0x0800, "ipv4_src": "10.0.0.3"},
            write_metadata=META,
            goto=Table.QUARANTINE,
            cookie=cookie(CookieKind.ENDPOINT, "ep2"),
        ),
        Flow.make(
            Table.ARP,
            100,
            {"metadata": META, "eth_type": 0x0806, "arp_op": 1, "arp_tpa": "10.0.0.1"},
            [
                Move("eth_src", "eth_dst"),
                SetField("eth_src", GW_MAC),
                SetField("arp_op", 2),
                Move("arp_sha", "arp_tha"),
                Move("arp_spa", "arp_tpa"),
                SetField("arp_sha", GW_MAC),
                SetField("arp_spa", "10.0.0.1"),
                Output(OFPP_IN_PORT),
            ],
            cookie=cookie(CookieKind.NETWORK, "net"),
        ),
        Flow.make(
            Table.STEERING,
            10,
            # bits outside the mask: OVS stores 10.9.0.0/16
            {"metadata": META, "eth_type": 0x0800, "ipv4_dst": ("10.9.1.2", "255.255.0.0")},
            [SetField("tunnel_id", 99), Move("metadata", "tunnel_id"), Move("reg0", "reg1")],
            goto=Table.ARP,
            cookie=cookie(CookieKind.NETWORK, "net"),
        ),
        Flow.make(  # full masks: OVS reports these fields unmasked
            Table.QUARANTINE,
            5,
            {"metadata": (KEY, 2**64 - 1), "eth_src": (MAC2.upper(), "ff:ff:ff:ff:ff:ff")},
            goto=Table.ACL,
        ),
        Flow.make(
            Table.L2,
            100,
            {"metadata": META, "eth_dst": MAC1},
            [Output(1)],
            cookie=cookie(CookieKind.ENDPOINT, "ep1"),
        ),
        Flow.make(
            Table.L2,
            100,
            {"metadata": META, "eth_dst": MAC2},
            [Output(2)],
            cookie=cookie(CookieKind.ENDPOINT, "ep2"),
        ),
        Flow.make(
            Table.L2,
            50,
            {"metadata": META, "eth_dst": ("01:00:00:00:00:00", "01:00:00:00:00:00")},
            [GroupAction(KEY)],
            cookie=cookie(CookieKind.NETWORK, "net"),
        ),
    ]
    groups = [
        Group(KEY, ((Output(1),), (Output(2),))),
        Group(6, ((SetField("eth_dst", GW_MAC), Output(2)),)),
    ]
    return BridgeState(frozenset(flows), frozenset(groups))


@dataclass
class Rig:
    ns: Netns
    ovs: OvsInstance
    ctl: ControllerProcess
    port: int
    tmp: Path

    def start(self, desired: BridgeState | None, *, port_flows: bool = False) -> None:
        """Host and desired state first, then the listener (so the connect finds them)."""
        self.ctl.set_host(HOST)
        self.ctl.set_desired(desired, port_flows=port_flows)
        self.ctl.listen()

    def make_bridge(self, ports: tuple[str, ...] = ("p1", "p2")) -> None:
        self.ovs.add_bridge(BR, dpid=HOST.dpid, controller=f"tcp:127.0.0.1:{self.port}")
        for number, name in enumerate(ports, start=1):
            self.ovs.add_internal_port(BR, name, ofport=number)
        self.ctl.wait_connected(HOST.name)

    def diff(self, state: BridgeState) -> str:
        """'' when the bridge holds exactly ``state`` (flows incl. cookies, and groups)."""
        path = self.tmp / "desired.flows"
        path.write_text("".join(ofvocab.render_flow(f) + "\n" for f in state.flows))
        flows = self.ovs.diff_flows(BR, path)
        want_groups = sorted(ofvocab.render_group(g) for g in state.groups)
        have_groups = self.ovs.dump_groups(BR)
        if want_groups != have_groups:
            flows += f"\ngroups: want {want_groups}, have {have_groups}"
        return flows.strip()

    def assert_holds(self, state: BridgeState) -> None:
        assert self.diff(state) == ""

    def wait_holds(self, state: BridgeState, timeout: float = 15.0) -> None:
        try:
            wait_until(lambda: self.diff(state) == "", timeout, "the bridge to hold the state")
        except TimeoutError:
            pytest.fail(f"bridge differs:\n{self.diff(state)}\n{self.ctl.log()}")

    def packet_out(self, in_port: int = 1) -> None:
        self.ovs.ofctl("packet-out", BR, f"in_port={in_port},packet={PACKET},actions=table")

    def counters(self) -> dict[str, tuple[int, float]]:
        """dump-flows line without its stats -> (n_packets, duration in seconds)."""
        out: dict[str, tuple[int, float]] = {}
        for line in self.ovs.dump_flows_stats(BR):
            packets = re.search(r"n_packets=(\d+)", line)
            duration = re.search(r"duration=([\d.]+)s", line)
            assert packets and duration, line
            bare = re.sub(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*, ", "", line)
            out[bare] = (int(packets.group(1)), float(duration.group(1)))
        return out

    def new_controller(self, resync: float = 0.0) -> ControllerProcess:
        self.ctl = ControllerProcess(self.port, netns=self.ns.name, resync=resync).start()
        return self.ctl


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    resync = getattr(request, "param", 0.0)
    tmp = Path(tempfile.mkdtemp(prefix="qlt-rig-"))
    try:
        with ovs_in_netns() as (ns, ovs):
            port = free_port(ns)
            ctl = ControllerProcess(port, netns=ns.name, resync=resync)
            rig = Rig(ns, ovs, ctl, port, tmp)
            try:
                ctl.start()
                yield rig
            finally:
                rig.ctl.cleanup()
                ctl.cleanup()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def installed(rig: Rig, state: BridgeState, *, port_flows: bool = False) -> None:
    """Start the controller, make the bridge and wait until the connect converge is done."""
    rig.start(state, port_flows=port_flows)
    rig.make_bridge()
    rig.wait_holds(state if not port_flows else _with_port_flows(state, {"p1": 1, "p2": 2}))


def _with_port_flows(state: BridgeState, ports: dict[str, int]) -> BridgeState:
    extra = {
        Flow.make(0, 100, {"in_port": n}, goto=10, cookie=cookie(CookieKind.ENDPOINT, name))
        for name, n in ports.items()
    }
    return BridgeState(state.flows | extra, state.groups)


def nothing(result: ReconcileResult) -> bool:
    return (
        result.flows_added,
        result.flows_deleted,
        result.groups_added,
        result.groups_modified,
        result.groups_deleted,
    ) == (0, 0, 0, 0, 0)


# ---- tests ------------------------------------------------------------------------


def test_connect_installs_exactly_the_desired_state_and_a_second_converge_sends_nothing(
    rig: Rig,
) -> None:
    state = base_state()
    installed(rig, state)
    metrics = rig.ctl.metrics(HOST.name)
    assert metrics.flows_added_total == len(state.flows)
    assert metrics.failures == 0

    again = rig.ctl.converge(HOST.name)
    assert nothing(again)
    assert rig.ctl.metrics(HOST.name).messages_sent == 0
    rig.assert_holds(state)

    dump = rig.ctl.dump(HOST.name)
    assert dump.connected
    expected = sorted(ofvocab.render_flow(ofvocab.normalize_flow(f)) for f in state.flows)
    assert sorted(dump.flows) == expected
    assert any("priority=5,eth_src=02:00:00:00:00:02,metadata=0x5 " in f for f in dump.flows)

    assert dump.groups == sorted(ofvocab.render_group(g) for g in state.groups)


def test_changing_the_desired_state_sends_only_the_difference(rig: Rig) -> None:
    state = base_state()
    installed(rig, state)
    rig.packet_out()
    before = rig.counters()
    classify = next(k for k in before if "priority=100,in_port=1," in k)
    unicast = next(k for k in before if "dl_dst=02:00:00:00:00:02" in k)
    assert before[classify][0] == 1 and before[unicast][0] == 1

    flows = set(state.flows)
    arp = next(f for f in flows if f.table == Table.ARP and f.priority == 100)
    flows.remove(arp)  # deleted
    ep1 = next(f for f in flows if f.table == Table.L2 and f.match_dict().get("eth_dst") == MAC1)
    flows.remove(ep1)  # replaced: other actions
    flows.add(Flow.make(ep1.table, ep1.priority, ep1.match_dict(), [Output(2)], cookie=ep1.cookie))
    steer = next(f for f in flows if f.table == Table.STEERING and f.priority == 10)
    flows.remove(steer)  # replaced: only the cookie changes
    flows.add(steer.with_cookie(0x42))
    new_mac: dict[str, MatchValue] = {"metadata": META, "eth_dst": "02:00:00:00:00:07"}
    flows.add(Flow.make(Table.L2, 100, new_mac, [Output(1)]))  # added
    groups = {
        Group(KEY, ((Output(1),), (Output(2),), (Output(3),))),  # modified
        Group(8, ((Output(1),),)),  # added; group 6 is deleted
    }
    changed = BridgeState(frozenset(flows), frozenset(groups))
    rig.ctl.set_desired(changed)
    result = rig.ctl.converge(HOST.name)
    assert (result.flows_added, result.flows_deleted) == (3, 1)
    assert (result.groups_added, result.groups_modified, result.groups_deleted) == (1, 1, 1)
    metrics = rig.ctl.metrics(HOST.name)
    assert metrics.flows_replaced == 2
    # group writes + barrier, flow adds + barrier, flow delete + barrier, group delete + barrier
    assert metrics.messages_sent == (2 + 1) + (3 + 1) + (1 + 1) + (1 + 1)
    rig.assert_holds(changed)

    after = rig.counters()
    for key in (classify, unicast):  # untouched flows kept their counters and age
        assert after[key][0] == 1, key
        assert after[key][1] >= before[key][1]
    assert nothing(rig.ctl.converge(HOST.name))


def test_a_flow_or_group_added_by_hand_is_removed(rig: Rig) -> None:
    state = base_state()
    installed(rig, state)
    rig.ovs.ofctl("add-flow", BR, "table=20,priority=7,ip,actions=NORMAL")
    rig.ovs.ofctl("add-flow", BR, f"table=0,priority=100,in_port=1,dl_src={MAC1},actions=drop")
    rig.ovs.ofctl("add-flow", BR, "table=30,priority=3,idle_timeout=500,actions=goto_table:40")
    rig.ovs.ofctl("add-group", BR, "group_id=99,type=all,bucket=output:1")
    assert rig.diff(state) != ""
    result = rig.ctl.converge(HOST.name)
    assert (result.flows_added, result.flows_deleted, result.groups_deleted) == (1, 2, 1)
    rig.assert_holds(state)


def test_a_change_diffs_against_the_last_confirmed_state_and_a_verify_reads_back(
    rig: Rig,
) -> None:
    """A converge for a change trusts what the last one confirmed (no dump of every flow);
    a verify (the REST reconcile, the periodic resync, a reconnect) reads the switch."""
    state = base_state()
    installed(rig, state)
    rig.ovs.ofctl("add-flow", BR, "table=20,priority=7,ip,actions=NORMAL")  # behind our back
    assert nothing(rig.ctl.converge(HOST.name, full=False))
    assert "priority=7" in rig.diff(state)  # not seen: it trusted its record
    result = rig.ctl.converge(HOST.name, full=True)
    assert result.flows_deleted == 1
    rig.assert_holds(state)
    assert nothing(rig.ctl.converge(HOST.name, full=False))


def test_a_controller_restart_against_a_correct_bridge_sends_nothing(rig: Rig) -> None:
    state = base_state()
    installed(rig, state)
    rig.packet_out()
    before = rig.counters()
    rig.ctl.kill()  # like a crash: no goodbye
    rig.assert_holds(state)  # fail_mode=secure: the bridge keeps its flows meanwhile

    rig.new_controller()
    rig.start(state)
    rig.ctl.wait_connected(HOST.name)
    metrics = rig.ctl.wait_runs(HOST.name, 1)
    assert metrics.last_trigger == "connect"
    assert nothing(metrics.last_result)
    assert metrics.messages_sent == 0
    assert metrics.desired_flows == len(state.flows)
    rig.assert_holds(state)
    after = rig.counters()
    assert after.keys() == before.keys()
    for key, (packets, duration) in before.items():
        assert after[key][0] == packets, key
        assert after[key][1] >= duration, key


def test_a_vswitchd_restart_gets_every_flow_back(rig: Rig) -> None:
    state = base_state()
    installed(rig, state)
    total = rig.ctl.metrics(HOST.name).flows_added_total
    old_pid = rig.ovs.vswitchd_pid()
    rig.ovs.restart_vswitchd()
    assert rig.ovs.vswitchd_pid() not in (None, old_pid)
    assert "Open vSwitch" in rig.ovs.appctl("version")
    rig.wait_holds(state)
    rig.ctl.wait_connected(HOST.name)
    metrics = rig.ctl.metrics(HOST.name)
    assert metrics.flows_added_total == total + len(state.flows)  # it came back empty
    assert rig.ctl.call("ports", HOST.name) == {BR: 0xFFFFFFFE, "p1": 1, "p2": 2}
    assert nothing(rig.ctl.converge(HOST.name))


def test_a_flow_the_switch_refuses_fails_the_converge_clearly(rig: Rig) -> None:
    state = base_state()
    installed(rig, state)
    bad = Flow.make(Table.ACL, 9, {}, [GroupAction(77)])  # no such group
    rig.ctl.set_desired(BridgeState(state.flows | {bad}, state.groups))
    with pytest.raises(SwitchRejected) as info:
        rig.ctl.converge(HOST.name)
    message = str(info.value)
    assert "OFPBAC_BAD_OUT_GROUP" in message and "group:77" in message
    assert "refused 1 of 1" in message
    metrics = rig.ctl.metrics(HOST.name)
    assert metrics.failures >= 1 and metrics.last_error == message
    rig.assert_holds(state)  # everything else is as it was


def test_not_connected_is_unavailable(rig: Rig) -> None:
    rig.start(base_state())
    with pytest.raises(Unavailable, match=r"brql of host h1 .* is not connected"):
        rig.ctl.converge(HOST.name)
    assert rig.ctl.call("is_connected", HOST.name) is False
    assert rig.ctl.dump(HOST.name).connected is False


def test_require_ports_waits_for_the_port(rig: Rig) -> None:
    state = base_state()
    installed(rig, state, port_flows=True)
    errors: list[BaseException] = []

    def add_port() -> None:
        try:
            rig.ovs.add_internal_port(BR, "p3", ofport=3)
        except BaseException as exc:
            errors.append(exc)

    timer = threading.Timer(0.5, add_port)
    timer.start()
    try:
        rig.ctl.converge(HOST.name, timeout=10, require_ports=["p3"])
    finally:
        timer.join(15)
    assert not errors
    assert rig.ctl.call("ports", HOST.name)["p3"] == 3
    rig.assert_holds(_with_port_flows(state, {"p1": 1, "p2": 2, "p3": 3}))

    started = time.monotonic()
    with pytest.raises(Timeout, match=r"port.*nope.*did not appear"):
        rig.ctl.converge(HOST.name, timeout=0.5, require_ports=["nope"])
    assert time.monotonic() - started < 5


def test_a_port_change_reconverges_by_itself(rig: Rig) -> None:
    state = base_state()
    installed(rig, state, port_flows=True)
    rig.ovs.add_internal_port(BR, "p4", ofport=4)
    rig.wait_holds(_with_port_flows(state, {"p1": 1, "p2": 2, "p4": 4}))
    rig.ovs.vsctl("del-port", BR, "p1")
    rig.wait_holds(_with_port_flows(state, {"p2": 2, "p4": 4}))


@pytest.mark.parametrize("rig", [0.5], indirect=True)
def test_the_periodic_resync_repairs_the_bridge(rig: Rig) -> None:
    state = base_state()
    installed(rig, state)
    rig.ovs.ofctl("add-flow", BR, "table=20,priority=7,actions=drop")
    rig.ovs.ofctl("del-flows", BR, "--strict", "table=0,priority=0")
    rig.wait_holds(state, timeout=10)
    assert rig.ctl.metrics(HOST.name).last_trigger == "resync"


# ---- the real pipeline --------------------------------------------------------------


def lab() -> tuple[list[Network], list[Endpoint]]:
    nets, eps = [], []
    for key in (1, 2):
        net = Network(
            id=f"{key:02x}" * 32,
            key=key,
            host=HOST.name,
            model=NetworkModel.NAT,
            pool_id=f"nat_10.128.{key}.0_24",
            subnet=f"10.128.{key}.0/24",
            gateway=f"10.128.{key}.1",
            gateway_mac=names.gateway_mac(key),
        )
        nets.append(net)
        for part in (2, 3):
            ep_id = f"e{key:02x}{part:02x}".ljust(64, "0")
            eps.append(
                Endpoint(
                    id=ep_id,
                    network_id=net.id,
                    host=HOST.name,
                    mac=names.endpoint_mac(ep_id),
                    address=f"10.128.{key}.{part}",
                    port_name=names.endpoint_port(ep_id),
                )
            )
    return nets, eps


def test_the_real_pipeline_round_trips_through_ovs(rig: Rig) -> None:
    nets, eps = lab()
    port_names = [names.gateway_port(n.id) for n in nets] + [e.port_name for e in eps]
    rig.ctl.set_host(HOST)
    rig.ctl.set_state(HOST.name, nets, eps)
    rig.ctl.set_desired(None)
    rig.ctl.listen()
    rig.make_bridge(tuple(port_names))
    result = rig.ctl.converge(HOST.name, require_ports=port_names)
    ports = rig.ctl.call("ports", HOST.name)
    desired = compute_bridge(nets, eps, ports)
    rig.assert_holds(desired)
    assert result.flows_deleted == 0
    assert nothing(rig.ctl.converge(HOST.name))
    assert rig.ctl.metrics(HOST.name).desired_flows == len(desired.flows)
    assert len(desired.groups) == 2


# ---- scale ------------------------------------------------------------------------


def many_flows(count: int, salt: int = 0) -> BridgeState:
    state = base_state()
    extra = {
        Flow.make(
            Table.L2,
            100,
            {"metadata": META, "eth_dst": f"02:10:00:00:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"},
            [Output(1 + (i + salt) % 2)],
            cookie=cookie(CookieKind.ENDPOINT, f"ep{i}"),
        )
        for i in range(count)
    }
    return BridgeState(state.flows | extra, state.groups)


def test_two_thousand_flows(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    installed(rig, base_state())
    big = many_flows(2000)
    rig.ctl.set_desired(big)

    started = time.monotonic()
    first = rig.ctl.converge(HOST.name, timeout=60)
    install_s = time.monotonic() - started
    assert first.flows_added == 2000 and first.flows_deleted == 0
    rig.assert_holds(big)

    started = time.monotonic()
    second = rig.ctl.converge(HOST.name, timeout=60)
    noop_s = time.monotonic() - started
    assert nothing(second)

    changed = many_flows(2000, salt=1)  # every flow's output changes
    rig.ctl.set_desired(changed)
    started = time.monotonic()
    third = rig.ctl.converge(HOST.name, timeout=60)
    change_s = time.monotonic() - started
    assert (third.flows_added, third.flows_deleted) == (2000, 0)
    rig.assert_holds(changed)

    rig.ctl.set_desired(base_state())
    started = time.monotonic()
    fourth = rig.ctl.converge(HOST.name, timeout=60)
    delete_s = time.monotonic() - started
    assert (fourth.flows_added, fourth.flows_deleted) == (0, 2000)

    with capsys.disabled():
        print(
            f"\n2,000 flows: install {install_s:.2f}s (reconciler {first.seconds:.2f}s), "
            f"no-op {noop_s:.2f}s ({second.seconds:.2f}s), "
            f"replace all {change_s:.2f}s, delete all {delete_s:.2f}s"
        )
    assert install_s < 30 and noop_s < 10
