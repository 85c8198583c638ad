"""Scale: 1,000 endpoints over 3 hosts and 50 networks, on a real controller and real bridges.

No Docker and no driver: the benchmark plays the drivers. It starts the real
``qingluan controller`` (tests/support/stack.py ``Stack`` without simulated
hosts: a private management bridge, REST and OpenFlow on its address, the
periodic resync off) and, per host, a network namespace with its own Open
vSwitch on the userspace datapath (tests/support/ovs.py) whose bridge ``br-ql``
(fail_mode secure, pinned datapath id) connects to the controller over a veth
on the management bridge. Then, over REST, in the driver's order:

- ``PUT /v1/hosts/{name}`` per host;
- per network: ``POST /v1/ipam/pools``, its gateway address, ``PUT /v1/networks``;
  network ``n`` lives on host ``n % hosts`` (vlan/vxlan: consecutive networks,
  one per host, share a VLAN id/VNI, so each segment spans the hosts);
- per endpoint, one after the other: ``POST .../addresses`` (with its MAC), then
  ``PUT /v1/endpoints``, which returns only after the bridge confirmed the
  endpoint's flows with a barrier. Endpoint ``j`` is on network ``j % networks``,
  so every prefix of the sequence is spread evenly over networks and hosts.

Every port the pipeline needs (``names.endpoint_port(id)``; for nat/nonat also
``names.gateway_port(network)``) is an OVS internal port, made in batches
before the first timed call, so no timed call waits for a port.

Reported: flows and groups per bridge (``ovs-ofctl``; checked against
``compute_bridge`` over the controller's state, and by a reconcile that finds
nothing to change), flows per endpoint, the PUT latency (first 50: the
baseline of this run; blocks of 200; last 50; all), the controller's own
converge time per PUT (from its log), one more endpoint when all exist (and
its deletion), the wall time. Ratios: latency vs the baseline (1.0: constant
cost per endpoint), flows vs the linear prediction from the bridges at 50 and
at 100 endpoints (1.0: linear; from 50 on, every network has an endpoint, so
per-network flows that come with a network's first endpoint are in both).

    .venv/bin/python benchmarks/scale.py [--endpoints 1000] [--hosts 3] [--networks 50]
                                         [--model nonat|nat|vlan|vxlan] [--timeout 420]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lib import (
    BenchError,
    Stack,
    bounded,
    cleanup_shielded,
    log,
    median,
    percentile,
    table,
)
from qingluan import names
from qingluan.api_schema import (
    AddressRequest,
    EndpointCreate,
    HostRegistration,
    NetworkCreate,
    PoolRequest,
)
from qingluan.controller.ofvocab import SwitchFlow, SwitchGroup
from qingluan.controller.pipeline import compute_bridge
from qingluan.controller.pipeline.flow import CookieKind, cookie
from qingluan.controller.reconciler import normalized_state, plan
from qingluan.driver.client import HttpControllerClient
from qingluan.driver.protocol import PHYSNET_OPTION, UPLINK_OPTION
from qingluan.errors import QingluanError
from qingluan.model import DatapathType, Endpoint, Host, Network, NetworkModel
from tests.support.ovs import Netns, OvsError, OvsInstance, veth
from tests.support.proc import run, wait_until

BRIDGE = "br-ql"
DPID_BASE = 0x5CA1_E000_0000_0000
PORT_BATCH = 100  # add-port clauses per ovs-vsctl call
GATEWAY_MODELS = (NetworkModel.NAT, NetworkModel.NONAT)  # the driver makes a gateway port
VNI_BASE = {NetworkModel.VLAN: 100, NetworkModel.VXLAN: 5000}
TRUNK_PORT = "trunk0"  # vlan: the host's trunk NIC as the driver's --uplink names it
CONVERGE_LINE = re.compile(
    rb"qingluan\.controller\.reconciler: host (\S+) \((\w+)\): \+\d+ -\d+ flows, "
    rb"groups \+\d+ ~\d+ -\d+ in ([0-9.]+)s"
)
FLOW_COUNT = re.compile(r"flow_count=(\d+)")
COOKIE = re.compile(r"cookie=(0x[0-9a-f]+)")


def docker_id(tag: str, kind: str, index: int) -> str:
    """A 64-hex id like Docker's, unique per run (port names use its first 12 chars)."""
    return hashlib.sha256(f"{tag}-{kind}-{index}".encode()).hexdigest()


class BenchStack(Stack):
    """The controller of tests/support/stack.py without simulated hosts, and with the
    periodic resync off: no background converge may run into the timed calls."""

    def controller_argv(self) -> list[str]:
        return [*super().controller_argv(), "--resync-interval", "0"]

    def log_size(self) -> int:
        assert self.controller is not None
        return self.controller.log.stat().st_size

    def log_bytes(self) -> bytes:
        assert self.controller is not None
        return self.controller.log.read_bytes()


class BenchHost:
    """One host: a namespace with its own OVS and bridge, linked to the management bridge."""

    def __init__(self, stack: Stack, name: str, index: int) -> None:
        self.stack = stack
        self.name = name
        self.index = index
        self.dpid = DPID_BASE + index + 1
        self.netns = Netns(f"qls-{stack.tag}-{name}")
        self.mgmt_dev = f"qls{stack.tag}{index}"
        self.mgmt_ip = str(stack.mgmt_net[10 + index])
        self.ovs: OvsInstance | None = None
        self.ovs_dir: Path | None = None

    def start(self) -> None:
        self.netns.create()
        veth(None, self.mgmt_dev, self.netns, "mgmt0")
        run(["ip", "link", "set", self.mgmt_dev, "master", self.stack.mgmt_bridge])
        prefix = self.stack.mgmt_net.prefixlen
        self.netns.run("ip", "addr", "add", f"{self.mgmt_ip}/{prefix}", "dev", "mgmt0")
        # a short /tmp work dir (unix socket paths are limited), named as this benchmark's
        self.ovs_dir = Path(tempfile.mkdtemp(prefix="qls-ovs-"))
        self.ovs = OvsInstance(self.ovs_dir, netns=self.netns.name, timeout=60).start()
        self.ovs.add_bridge(
            BRIDGE, dpid=self.dpid, controller=f"tcp:{self.stack.mgmt_ip}:{self.stack.of_port}"
        )

    def add_model_port(self, model: NetworkModel) -> list[str]:
        """What the driver puts on the bridge for the model: a flow-based VXLAN port
        (vxlan), the trunk NIC (vlan: an internal port stands in for it)."""
        assert self.ovs is not None
        if model is NetworkModel.VXLAN:
            port = names.TUNNEL_PORT
            self.ovs.vsctl(
                *("--may-exist", "add-port", BRIDGE, port, "--", "set", "interface", port),
                *("type=vxlan", "options:remote_ip=flow", "options:key=flow"),
                f"options:local_ip={self.mgmt_ip}",
            )
            return [port]
        if model is NetworkModel.VLAN:
            self.add_ports([TRUNK_PORT])
            return [TRUNK_PORT]
        return []

    def add_ports(self, ports: Sequence[str]) -> None:
        """Internal ports, ``PORT_BATCH`` per ``ovs-vsctl`` call (which waits for vswitchd)."""
        assert self.ovs is not None
        for start in range(0, len(ports), PORT_BATCH):
            args: list[str] = []
            for port in ports[start : start + PORT_BATCH]:
                args += ["--", "--may-exist", "add-port", BRIDGE, port]
                args += ["--", "set", "interface", port, "type=internal"]
            self.ovs.vsctl(*args[1:])

    def flow_count(self) -> int:
        assert self.ovs is not None
        m = FLOW_COUNT.search(self.ovs.ofctl("dump-aggregate", BRIDGE))
        if m is None:
            raise BenchError(f"{self.name}: no flow_count in ovs-ofctl dump-aggregate")
        return int(m.group(1))

    def group_count(self) -> int:
        assert self.ovs is not None
        return len(self.ovs.dump_groups(BRIDGE))

    def cookies(self) -> Counter[int]:
        """How many flows of the bridge carry each cookie."""
        assert self.ovs is not None
        out = self.ovs.ofctl("dump-flows", BRIDGE)
        return Counter(int(m.group(1), 16) for m in COOKIE.finditer(out))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.ovs is None and self.ovs_dir is not None:  # start() failed half-way
                self.ovs = OvsInstance(self.ovs_dir, netns=self.netns.name)
            if self.ovs is not None:
                self.ovs.stop()
        with contextlib.suppress(Exception):
            self.netns.delete()  # the veth pair goes with it
        run(["ip", "link", "del", self.mgmt_dev], check=False)
        if self.ovs_dir is not None:
            shutil.rmtree(self.ovs_dir, ignore_errors=True)


@dataclass(frozen=True)
class Planned:
    id: str
    network: Network
    mac: str
    port: str


@dataclass
class Call:
    """One timed REST call and the controller's converges during it (from its log)."""

    seconds: float
    log_start: int
    log_end: int
    converge_s: float = 0.0
    converges: int = 0


@dataclass(frozen=True)
class Snapshot:
    flows: dict[str, int]
    groups: dict[str, int]

    @property
    def total_flows(self) -> int:
        return sum(self.flows.values())

    @property
    def total_groups(self) -> int:
        return sum(self.groups.values())


@dataclass(frozen=True)
class Options:
    endpoints: int
    hosts: int
    networks: int
    model: NetworkModel
    baseline: int
    extra: int


@dataclass
class Results:
    opts: Options
    hosts: list[str]
    networks: list[Network]
    planned: list[Planned]
    setup_s: tuple[float, float] = (0.0, 0.0)
    snaps: dict[str, Snapshot] | None = None
    address_s: list[float] | None = None
    puts: list[Call] | None = None
    more_puts: list[Call] | None = None
    more_deletes: list[Call] | None = None
    wall_s: float = 0.0
    pipeline: dict[str, int] | None = None
    noop: bool = False
    parts: dict[str, tuple[float, int]] | None = None


# ---- steps ----------------------------------------------------------------------------


def snapshot(hosts: Sequence[BenchHost]) -> Snapshot:
    return Snapshot(
        flows={h.name: h.flow_count() for h in hosts},
        groups={h.name: h.group_count() for h in hosts},
    )


def settle(stack: Stack, host: BenchHost, ports: Sequence[str], timeout: float = 60.0) -> None:
    """Wait until the controller knows every port of ``ports`` on the host's bridge, then
    converge it once synchronously (behind any background converge the ports caused)."""
    want = set(ports)

    def known() -> bool:
        status = stack.get(f"/v1/hosts/{host.name}")
        return bool(status["connected"]) and want <= set(status["ports"])

    wait_until(known, timeout, f"the controller to see {len(want)} ports of {host.name}", 0.2)
    reconcile(stack, host.name)


def reconcile(stack: Stack, host: str) -> dict[str, Any]:
    reply = stack.request("POST", f"/v1/hosts/{host}/reconcile")
    if reply.status_code != 200:
        raise BenchError(f"reconcile {host}: {reply.status_code} {reply.text[:300]}")
    result: dict[str, Any] = reply.json()
    return result


def attribute_converges(log_bytes: bytes, calls: Sequence[Call]) -> None:
    """Fill in each call's converges: the controller's 'host H (request): ...' lines that
    were written while the call ran (they are written before the reply is sent)."""
    for call in calls:
        chunk = log_bytes[call.log_start : call.log_end]
        seconds = [
            float(m.group(3)) for m in CONVERGE_LINE.finditer(chunk) if m.group(2) == b"request"
        ]
        call.converge_s, call.converges = sum(seconds), len(seconds)


def tunnel_peers_of(stack: Stack, host: str) -> list[Any]:
    """What the controller hands ``compute_bridge`` as peers (vxlan), from its REST state."""
    try:
        from qingluan.controller.services import tunnel_peers
    except ImportError:  # the vxlan pipeline is young: no peers then
        return []
    hosts = {h["host"]["name"]: Host.model_validate(h["host"]) for h in stack.get("/v1/hosts")}
    networks = [Network.model_validate(n) for n in stack.get("/v1/networks")]
    endpoints = [Endpoint.model_validate(e) for e in stack.get("/v1/endpoints")]
    return list(tunnel_peers(host, hosts, networks, endpoints))


def pipeline_cost(
    stack: Stack, client: HttpControllerClient, host: BenchHost, repeat: int = 3
) -> tuple[float, int]:
    """The pure part of one converge of ``host`` now, run in this process: ``compute_bridge``
    + ``normalized_state`` + ``plan`` against a switch that holds exactly that state
    (nothing to send); median of ``repeat`` (s), and the number of flows."""
    networks = client.list_networks(host.name)
    endpoints = client.list_endpoints(host.name)
    ports = stack.get(f"/v1/hosts/{host.name}")["ports"]
    peers = tunnel_peers_of(stack, host.name)
    times: list[float] = []
    flows = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        desired = normalized_state(compute_bridge(networks, endpoints, ports, peers))
        t1 = time.perf_counter()
        held = [SwitchFlow(f) for f in desired.flows], [SwitchGroup(g) for g in desired.groups]
        t2 = time.perf_counter()  # (making the switch's side is not the controller's work)
        todo = plan(desired, *held)
        times.append(t1 - t0 + time.perf_counter() - t2)
        if not todo.empty:
            raise BenchError(f"{host.name}: a plan against its own state is not empty")
        flows = len(desired.flows)
    return median(times), flows


def check_bridges(
    stack: Stack, client: HttpControllerClient, hosts: Sequence[BenchHost]
) -> tuple[dict[str, int], bool]:
    """Every bridge holds what ``compute_bridge`` makes of the controller's state, every
    endpoint has flows, and a reconcile finds nothing to change. Returns the pipeline's
    flow count per host and whether every reconcile was a no-op."""
    expected: dict[str, int] = {}
    noop = True
    for host in hosts:
        networks = client.list_networks(host.name)
        endpoints = client.list_endpoints(host.name)
        ports = stack.get(f"/v1/hosts/{host.name}")["ports"]
        desired = compute_bridge(networks, endpoints, ports, tunnel_peers_of(stack, host.name))
        expected[host.name] = len(desired.flows)
        by_cookie = host.cookies()
        bare = [e.id for e in endpoints if by_cookie[cookie(CookieKind.ENDPOINT, e.id)] == 0]
        if bare:
            raise BenchError(f"{host.name}: {len(bare)} endpoints have no flow, e.g. {bare[0]}")
        result = reconcile(stack, host.name)
        changes = ("flows_added", "flows_deleted", "groups_added", "groups_modified")
        noop = noop and not any(result[k] for k in (*changes, "groups_deleted"))
    return expected, noop


def setup(
    opts: Options, stack: BenchStack, hosts: Sequence[BenchHost], client: HttpControllerClient
) -> Results:
    t0 = time.monotonic()
    log(f"starting the controller and {opts.hosts} OVS instances")
    stack.start()
    for host in hosts:
        host.start()
    for host in hosts:
        registration = HostRegistration(
            dpid=host.dpid, bridge=BRIDGE, datapath_type=DatapathType.NETDEV, address=host.mgmt_ip
        )
        client.register_host(host.name, registration)
    for host in hosts:
        wait_until(partial(stack.host_connected, host.name), 30, f"{host.name} to connect")
    t_up = time.monotonic()
    log(f"bridges connected in {t_up - t0:.1f} s")

    networks: list[Network] = []
    for n in range(opts.networks):
        host = hosts[n % len(hosts)]
        # a VLAN/VXLAN segment has one subnet on every host: the first network of the
        # segment carves it, the others ask for it by --subnet (and get the same pool)
        first = n - n % len(hosts)
        shared = networks[first].subnet if opts.model in VNI_BASE and n > first else None
        pool = client.request_pool(PoolRequest(pool=opts.model.value, subnet=shared))
        client.request_address(pool.pool_id, AddressRequest(gateway=True))
        vni = VNI_BASE[opts.model] + n // len(hosts) if opts.model in VNI_BASE else None
        options = (
            {PHYSNET_OPTION: "physnet1", UPLINK_OPTION: TRUNK_PORT}
            if opts.model is NetworkModel.VLAN
            else {}
        )
        body = NetworkCreate(
            host=host.name, model=opts.model, pool_id=pool.pool_id, vni=vni, options=options
        )
        created = client.create_network(docker_id(stack.tag, "net", n), body)
        networks.append(created.network)

    planned = []
    for j in range(opts.endpoints + opts.extra):
        ep_id = docker_id(stack.tag, "ep", j)
        net = networks[j % len(networks)]
        planned.append(Planned(ep_id, net, names.endpoint_mac(ep_id), names.endpoint_port(ep_id)))
    if len({p.port for p in planned}) != len(planned):
        raise BenchError("two endpoints share a port name (the first 12 id characters)")
    model_ports = {h.name: h.add_model_port(opts.model) for h in hosts}
    ports: dict[str, list[str]] = {h.name: [] for h in hosts}
    if opts.model in GATEWAY_MODELS:
        for net in networks:
            ports[net.host].append(names.gateway_port(net.id))
    for p in planned:
        ports[p.network.host].append(p.port)
    for host in hosts:
        host.add_ports(ports[host.name])
    for host in hosts:
        settle(stack, host, model_ports[host.name] + ports[host.name])
    t_ports = time.monotonic()
    log(
        f"{opts.networks} networks and {sum(map(len, ports.values()))} ports in "
        f"{t_ports - t_up:.1f} s"
    )
    return Results(
        opts, [h.name for h in hosts], networks, planned, setup_s=(t_up - t0, t_ports - t_up)
    )


def endpoint_body(p: Planned, address: str) -> EndpointCreate:
    return EndpointCreate(
        network_id=p.network.id,
        host=p.network.host,
        mac=p.mac,
        address=address.split("/")[0],
        port_name=p.port,
    )


def register(
    opts: Options,
    stack: BenchStack,
    hosts: Sequence[BenchHost],
    client: HttpControllerClient,
    res: Results,
) -> None:
    snaps = {"0": snapshot(hosts)}
    parts: dict[str, tuple[float, int]] = {}
    log(f"registering {opts.endpoints} endpoints, one after the other")
    address_s: list[float] = []
    puts: list[Call] = []
    untimed = 0.0
    began = time.monotonic()
    for j, p in enumerate(res.planned[: opts.endpoints]):
        a0 = time.monotonic()
        reply = client.request_address(p.network.pool_id, AddressRequest(mac=p.mac))
        start = stack.log_size()
        a1 = time.monotonic()
        status = client.create_endpoint(p.id, endpoint_body(p, reply.address))
        a2 = time.monotonic()
        puts.append(Call(a2 - a1, start, stack.log_size()))
        address_s.append(a1 - a0)
        if not status.flows_confirmed:
            raise BenchError(f"endpoint {j}: flows not confirmed")
        if j + 1 == opts.baseline:
            snaps["baseline"] = snapshot(hosts)  # between two registrations: not timed
            parts["baseline"] = pipeline_cost(stack, client, hosts[0])
            untimed += time.monotonic() - a2
        if j + 1 == 2 * opts.baseline:
            snaps["baseline2"] = snapshot(hosts)
            untimed += time.monotonic() - a2
        if (j + 1) % 200 == 0:
            log(f"  {j + 1} endpoints, last PUT {ms(a2 - a1)} ms")
    wall = time.monotonic() - began - untimed
    snaps["end"] = snapshot(hosts)
    parts["end"] = pipeline_cost(stack, client, hosts[0])

    # one more endpoint when all exist, removed again, --extra times
    more_puts: list[Call] = []
    more_deletes: list[Call] = []
    for p in res.planned[opts.endpoints :]:
        reply = client.request_address(p.network.pool_id, AddressRequest(mac=p.mac))
        start = stack.log_size()
        a1 = time.monotonic()
        client.create_endpoint(p.id, endpoint_body(p, reply.address))
        a2 = time.monotonic()
        middle = stack.log_size()
        client.delete_endpoint(p.id)
        a3 = time.monotonic()
        more_puts.append(Call(a2 - a1, start, middle))
        more_deletes.append(Call(a3 - a2, middle, stack.log_size()))
        client.release_address(p.network.pool_id, reply.address.split("/")[0])

    attribute_converges(stack.log_bytes(), [*puts, *more_puts, *more_deletes])
    res.snaps, res.address_s, res.puts, res.wall_s = snaps, address_s, puts, wall
    res.more_puts, res.more_deletes, res.parts = more_puts, more_deletes, parts
    res.pipeline, res.noop = check_bridges(stack, client, hosts)


def measure(opts: Options) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="qlbench-scale-"))
    stack = BenchStack(workdir, host_names=())
    hosts = [BenchHost(stack, f"scale{i + 1}", i) for i in range(opts.hosts)]
    client = HttpControllerClient(stack.api_url, token_file=stack.token_file, timeout=30)
    ok = False
    try:
        res = setup(opts, stack, hosts, client)
        register(opts, stack, hosts, client, res)
        ok = True
    finally:
        with cleanup_shielded():
            with contextlib.suppress(Exception):
                client.close()
            for host in hosts:
                host.close()
            with contextlib.suppress(Exception):
                stack.close()
            if not ok and stack.controller is not None:
                log(f"the failed run's controller log ends:\n{stack.controller.tail(12)}")
            shutil.rmtree(workdir, ignore_errors=True)
    report(res)
    return 0


# ---- the report -----------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def slope_ms_per_100(values: Sequence[float]) -> float:
    """Least-squares slope of latency (s) over the number of endpoints that existed, in
    ms per 100 endpoints."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    sxy = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return sxy / sxx * 1000 * 100 if sxx else 0.0


def latency_row(name: str, calls: Sequence[Call]) -> list[str]:
    put = [c.seconds for c in calls]
    conv = [c.converge_s for c in calls]
    outside = [c.seconds - c.converge_s for c in calls]
    return [
        name,
        str(len(put)),
        ms(median(put)),
        ms(percentile(put, 95)),
        ms(max(put)),
        ms(median(conv)),
        ms(median(outside)),
        f"{sum(c.converges for c in calls) / len(calls):.1f}",
    ]


def report(res: Results) -> None:
    opts = res.opts
    assert res.snaps is not None and res.puts is not None and res.address_s is not None
    assert res.more_puts is not None and res.more_deletes is not None
    assert res.pipeline is not None
    zero, base, base2, end = (res.snaps[k] for k in ("0", "baseline", "baseline2", "end"))
    b, n = opts.baseline, opts.endpoints
    nets_per_host = Counter(net.host for net in res.networks)
    eps_per_host = Counter(p.network.host for p in res.planned[:n])

    def predicted(at_b: int, at_2b: int) -> float:
        return at_b + (at_2b - at_b) * (n - b) / b

    print()
    print(
        f"scale: {n} endpoints, {opts.networks} {opts.model.value} networks, {opts.hosts} hosts "
        "(real controller; one OVS per host, userspace datapath; no Docker)"
    )
    print(
        f"setup: bridges connected in {res.setup_s[0]:.1f} s; networks and "
        f"{n + opts.extra} endpoint ports in {res.setup_s[1]:.1f} s"
    )
    print()
    print(
        f"flows per host bridge (ovs-ofctl); linear prediction from this run's first {2 * b}: "
        f"flows@{b} + (flows@{2 * b} - flows@{b}) * ({n} - {b})/{b}"
    )
    rows = []
    for name in res.hosts:
        pred = predicted(base.flows[name], base2.flows[name])
        rows.append(
            [
                name,
                str(nets_per_host[name]),
                str(eps_per_host[name]),
                str(zero.flows[name]),
                str(base.flows[name]),
                str(base2.flows[name]),
                str(end.flows[name]),
                str(end.groups[name]),
                f"{pred:.0f}",
                f"{end.flows[name] / pred:.3f}",
                "yes" if res.pipeline[name] == end.flows[name] else f"NO ({res.pipeline[name]})",
            ]
        )
    total_pred = predicted(base.total_flows, base2.total_flows)
    rows.append(
        [
            "total",
            str(len(res.networks)),
            str(n),
            str(zero.total_flows),
            str(base.total_flows),
            str(base2.total_flows),
            str(end.total_flows),
            str(end.total_groups),
            f"{total_pred:.0f}",
            f"{end.total_flows / total_pred:.3f}",
            "",
        ]
    )
    headers = ["host", "networks", "endpoints", "flows@0", f"flows@{b}", f"flows@{2 * b}"]
    headers += [f"flows@{n}", "groups", "predicted", "ratio", "= compute_bridge"]
    print(table(headers, rows))
    per_ep = (end.total_flows - base.total_flows) / (n - b)
    per_ep_base = (base2.total_flows - base.total_flows) / b
    print(
        f"flows per endpoint: {per_ep:.2f} (endpoints {b + 1}-{n}; endpoints {b + 1}-{2 * b}: "
        f"{per_ep_base:.2f}, ratio {per_ep / per_ep_base:.3f}); {end.total_flows / n:.2f} "
        f"with the fixed and per-network flows; groups: {zero.total_groups} at 0 endpoints, "
        f"{end.total_groups} at {n}"
    )

    puts = res.puts
    print()
    print("PUT /v1/endpoints latency, ms (it returns once a barrier confirmed the flows);")
    print(
        "converge: the controller's reconciles that changed a bridge during the call (from its "
        "log); outside: the rest (HTTP, store reads, checks, no-op reconciles)"
    )
    rows = [latency_row(f"first {b} (baseline)", puts[:b])]
    block = max(b, n // 5)
    rows += [
        latency_row(f"{i + 1}-{min(i + block, n)}", puts[i : i + block]) for i in range(0, n, block)
    ]
    rows += [
        latency_row(f"last {b}", puts[-b:]),
        latency_row(f"all {n}", puts),
        latency_row(f"one more at {n}", res.more_puts),
        latency_row(f"delete it at {n}", res.more_deletes),
    ]
    headers = ["endpoints", "n", "p50", "p95", "max", "converge p50", "outside p50"]
    print(table([*headers, "converges/call"], rows))
    first = [c.seconds for c in puts[:b]]
    last = [c.seconds for c in puts[-b:]]
    more = [c.seconds for c in res.more_puts]
    print(
        f"ratios vs the first {b} (1.0: constant cost per endpoint): last {b} p50 "
        f"{median(last) / median(first):.2f}, p95 "
        f"{percentile(last, 95) / percentile(first, 95):.2f}; one more at {n}: p50 "
        f"{median(more) / median(first):.2f}"
    )
    conv_first = median([c.converge_s for c in puts[:b]])
    conv_last = median([c.converge_s for c in puts[-b:]])
    print(
        f"trend: {slope_ms_per_100([c.seconds for c in puts]):+.1f} ms per 100 endpoints that "
        f"exist (least squares); controller converge p50 {ms(conv_first)} -> "
        f"{ms(conv_last)} ms (ratio {conv_last / conv_first:.2f}) while a bridge grows "
        f"{base.total_flows / opts.hosts:.0f} -> {end.total_flows / opts.hosts:.0f} flows "
        f"(ratio {end.total_flows / base.total_flows:.2f})"
    )
    assert res.parts is not None
    rows = []
    windows = ((f"{b}", "baseline", conv_first, puts[:b]), (f"{n}", "end", conv_last, puts[-b:]))
    for label, key, conv_p50, window in windows:
        pure, flows = res.parts[key]
        one = conv_p50 / max(1.0, median([c.converges for c in window]))  # per converge
        rows.append(
            [
                f"at {label} endpoints",
                str(flows),
                ms(one),
                f"{ms(pure)} ({pure / one:.0%})",
                ms(one - pure),
                f"{one * 1000 / flows:.3f}",
            ]
        )
    print(
        f"where one converge's time goes ({res.hosts[0]}'s flows; p50 of the call's converges "
        "divided by their number); pipeline: compute_bridge + normalized_state + plan, timed "
        "in this process; rest: store reads, the bridge's flow and group dumps and their "
        "decoding, the mods and the barrier:"
    )
    headers = ["", "flows", "converge ms", "pipeline ms", "rest ms", "ms per flow"]
    print(table(headers, rows))
    addr = res.address_s
    print(
        f"IPAM address request before each PUT, p50 ms: first {b} {ms(median(addr[:b]))}, "
        f"last {b} {ms(median(addr[-b:]))}"
    )
    put_total = sum(c.seconds for c in puts)
    conv_total = sum(c.converge_s for c in puts)
    print(
        f"wall time of the {n} registrations (address + PUT, sequential): {res.wall_s:.1f} s "
        f"= {n / res.wall_s:.1f} endpoints/s; PUT {put_total:.1f} s, of which controller "
        f"converges {conv_total:.1f} s; address requests {sum(addr):.1f} s"
    )
    noop = "nothing to change" if res.noop else "CHANGES (the bridges were not right)"
    print(
        f"after the run: every endpoint has flows on its bridge (ovs-ofctl); a reconcile of "
        f"every bridge found {noop}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--networks", type=int, default=50)
    parser.add_argument(
        "--model",
        choices=[m.value for m in NetworkModel if m is not NetworkModel.FLAT],
        default="nonat",
        help="network model (default nonat; vlan/vxlan: one VLAN id/VNI per group of "
        "--hosts networks)",
    )
    parser.add_argument(
        "--baseline", type=int, default=50, help="the first N endpoints are the baseline"
    )
    parser.add_argument(
        "--extra", type=int, default=5, help="times one more endpoint is added and removed"
    )
    parser.add_argument("--timeout", type=float, default=420.0, help="bound of the whole run, s")
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.networks < args.hosts:
        parser.error("need at least one host, and at least as many networks as hosts")
    if not 1 <= args.baseline <= args.endpoints // 2:
        parser.error("--baseline must be between 1 and half of --endpoints")
    if args.extra < 1:
        parser.error("--extra must be at least 1")
    if -(-(args.endpoints + args.extra) // args.networks) > 250:
        parser.error("too many endpoints per network for a /24")
    opts = Options(
        endpoints=args.endpoints,
        hosts=args.hosts,
        networks=args.networks,
        model=NetworkModel(args.model),
        baseline=args.baseline,
        extra=args.extra,
    )
    try:
        with bounded(args.timeout):
            return measure(opts)
    except BenchError as exc:
        print(f"scale: FAILED: {exc}", file=sys.stderr)
    except (QingluanError, OvsError, TimeoutError, subprocess.SubprocessError, OSError) as exc:
        print(f"scale: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("scale: interrupted (everything it started is removed)", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
