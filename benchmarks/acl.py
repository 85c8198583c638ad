"""ACL: one rule between 300 tier=web and 300 tier=db endpoints on 3 hosts.

The rig is scale.py's (imported from there, not copied): the real
``qingluan controller`` with the periodic resync off and, per host, a network
namespace with its own Open vSwitch on the userspace datapath whose ``br-ql``
connects to the controller; no Docker and no driver, the benchmark makes the
drivers' REST calls. A nonat network lives on one host, so "one network over
3 hosts" is one nonat network per host (endpoint ``j`` on host ``j % 3``); the
rule names labels, not networks, so that is the same rule.

Steps: register ``--web + --db`` endpoints (each with its internal port on its
bridge, made before the first timed call), ``PATCH /v1/endpoints/{id}`` with
``{"labels": {"tier": "web"|"db"}}`` (no rule exists yet: nothing converges),
then ``--cycles`` times: a no-op ``POST /v1/hosts/H/reconcile`` of every host
(the baseline), ``POST /v1/acls`` with

    {"direction": "ingress", "src": {"label": "tier=web"}, "dst": {"label": "tier=db"},
     "protocol": "tcp", "ports": "5432", "action": "allow", "priority": 10 + cycle}

(it returns once every bridge confirmed its flows with a barrier), the no-op
reconciles again (the bridges must hold exactly what the controller wants),
``DELETE /v1/acls/{id}`` (returns once every bridge lost them).

Reported: the rule's flows per bridge (cookie top byte 0x04, ``ovs-ofctl
dump-flows``) against the naive N x M pairs and against the compiler's
N + M + 1 (N: the host's own tier=db endpoints, the selected side of an
ingress rule; M: every tier=web address in the cluster; 1: the conj_id flow),
and against ``compute_bridge`` over the controller's REST state; the fixed ACL
flows that come with the first rule; the latency of the POST and the DELETE,
median of the cycles, as a ratio of the no-op reconcile of the 3 hosts
measured in the same cycle.

    .venv/bin/python benchmarks/acl.py [--web 300] [--db 300] [--hosts 3] [--cycles 5]
                                       [--timeout 240]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from benchmarks.lib import (
    BenchError,
    bounded,
    cleanup_shielded,
    log,
    median,
    table,
)
from benchmarks.scale import (
    BRIDGE,
    COOKIE,
    BenchHost,
    BenchStack,
    Call,
    Options,
    Planned,
    attribute_converges,
    endpoint_body,
    ms,
    setup,
    tunnel_peers_of,
)
from qingluan.api_schema import AddressRequest, EndpointUpdate
from qingluan.controller.ofvocab import SwitchFlow, SwitchGroup
from qingluan.controller.pipeline import Policy, compute_bridge
from qingluan.controller.pipeline.acl import acl_flows
from qingluan.controller.pipeline.flow import COOKIE_KIND_SHIFT, CookieKind
from qingluan.controller.reconciler import normalized_state, plan
from qingluan.driver.client import HttpControllerClient
from qingluan.errors import QingluanError
from qingluan.model import AclRule, Endpoint, Network, NetworkModel
from tests.support.ovs import OvsError

LABEL_KEY = "tier"
WEB, DB = "web", "db"
PORT = "5432"
FIRST_PRIORITY = 10
# fixed flows of the ACL tables once any rule exists (pipeline/acl.py acl_flows): +inv drop,
# +est/+rel in ACL_EGRESS and ACL_INGRESS; per network in a rule's scope: the ct() entry in
# table ACL and the default verdict in ACL_INGRESS
FIXED_ACL_FLOWS, PER_NETWORK_ACL_FLOWS = 5, 2
CLAUSE = re.compile(r"conjunction\(\d+,(\d+/\d+)\)")


def rule_body(rule_id: str, priority: int) -> dict[str, Any]:
    return {
        "id": rule_id,
        "direction": "ingress",
        "src": {"label": f"{LABEL_KEY}={WEB}"},
        "dst": {"label": f"{LABEL_KEY}={DB}"},
        "protocol": "tcp",
        "ports": PORT,
        "action": "allow",
        "priority": priority,
    }


def acl_cookie_flows(host: BenchHost) -> Counter[str]:
    """The bridge's flows whose cookie's top byte is ``CookieKind.ACL`` (0x04), by part
    of the conjunctive match: ``1/2`` (the selected side's clause), ``2/2`` (the peer
    side's), ``conj_id`` (the verdict), ``other``; ``total``."""
    assert host.ovs is not None
    parts: Counter[str] = Counter()
    for line in host.ovs.ofctl("dump-flows", BRIDGE).splitlines():
        m = COOKIE.search(line)
        if m is None or int(m.group(1), 16) >> COOKIE_KIND_SHIFT != CookieKind.ACL:
            continue
        parts["total"] += 1
        clause = CLAUSE.search(line)
        if clause is not None:
            parts[clause.group(1)] += 1
        elif "conj_id=" in line:
            parts["conj_id"] += 1
        else:
            parts["other"] += 1
    return parts


@dataclass
class HostCount:
    """The first rule's flows on one bridge."""

    endpoints: int
    db_here: int  # N: the rule's selected side on this host (ingress: dst)
    web_peers: int  # M: the peer side, the whole cluster's tier=web addresses
    networks: int
    flows_before: int
    flows_with: int
    acl_flows: int  # cookie 0x04 on the bridge
    parts: Counter[str]  # of those: conjunction clauses 1/2, 2/2, conj_id, other
    computed_acl: int  # cookie 0x04 in compute_bridge over the controller's state
    computed_delta: int  # compute_bridge with the rule minus without
    compile_s: float  # acl_flows() in this process, median of 3
    pipeline_s: float  # compute_bridge + normalized_state + plan of the POST, median of 3

    @property
    def predicted(self) -> int:
        """The compiler's count (pipeline/acl.py rule_flows): N + M + 1 where both sides
        are sets; a side of one address joins the match (then one flow per address of the
        other side, or a single flow); nothing where a side is empty."""
        if not (self.db_here and self.web_peers):
            return 0
        sets = [n for n in (self.db_here, self.web_peers) if n > 1]
        return sum(sets) + 1 if len(sets) == 2 else (sets[0] if sets else 1)


@dataclass
class Cycle:
    priority: int
    baseline: float  # the 3 no-op reconciles, one after the other (wall, s)
    baseline_converge: float  # their own 'seconds', summed
    post: Call
    verify: float  # the 3 reconciles with the rule on the bridges
    verify_converge: float
    delete: Call


@dataclass
class Results:
    hosts: list[str]
    web: int
    db: int
    setup_s: tuple[float, float]
    register_s: float = 0.0
    put_s: list[float] = field(default_factory=list)
    patch_s: list[float] = field(default_factory=list)
    counts: dict[str, HostCount] = field(default_factory=dict)
    cycles: list[Cycle] = field(default_factory=list)


class Api:
    """One keep-alive HTTP client for every timed call (the rules, the reconciles)."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self.http = httpx.Client(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {stack.token}"},
            timeout=60,
        )

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: Any = None, want: int = 200) -> httpx.Response:
        reply = self.http.request(method, path, json=body)
        if reply.status_code != want:
            raise BenchError(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
        return reply

    def timed(self, method: str, path: str, body: Any, want: int) -> Call:
        start = self.stack.log_size()
        t0 = time.monotonic()
        self.call(method, path, body, want)
        seconds = time.monotonic() - t0
        return Call(seconds, start, self.stack.log_size())

    def reconcile_all(self, hosts: Sequence[str]) -> tuple[float, float]:
        """``POST /v1/hosts/H/reconcile`` of each host in turn; (wall s, converge s).
        Every one must find nothing to change."""
        converge = 0.0
        t0 = time.monotonic()
        results = [self.call("POST", f"/v1/hosts/{h}/reconcile").json() for h in hosts]
        wall = time.monotonic() - t0
        for result in results:
            converge += float(result["seconds"])
            changed = {
                k: result[k]
                for k in (
                    "flows_added",
                    "flows_deleted",
                    "groups_added",
                    "groups_modified",
                    "groups_deleted",
                )
                if result[k]
            }
            if changed:
                raise BenchError(f"reconcile of {result['host']} was not a no-op: {changed}")
        return wall, converge


# ---- steps ----------------------------------------------------------------------------


def tier_of(index: int, web: int) -> str:
    return WEB if index < web else DB


def register(
    stack: BenchStack, client: HttpControllerClient, planned: Sequence[Planned], res: Results
) -> None:
    log(f"registering {len(planned)} endpoints, one after the other")
    began = time.monotonic()
    for j, p in enumerate(planned):
        reply = client.request_address(p.network.pool_id, AddressRequest(mac=p.mac))
        t0 = time.monotonic()
        status = client.create_endpoint(p.id, endpoint_body(p, reply.address))
        res.put_s.append(time.monotonic() - t0)
        if not status.flows_confirmed:
            raise BenchError(f"endpoint {j}: flows not confirmed")
        if (j + 1) % 200 == 0:
            log(f"  {j + 1} endpoints, last PUT {ms(res.put_s[-1])} ms")
    res.register_s = time.monotonic() - began
    log(f"labelling them {LABEL_KEY}={WEB} (the first {res.web}) and {LABEL_KEY}={DB}")
    for j, p in enumerate(planned):
        t0 = time.monotonic()
        updated = client.update_endpoint(
            p.id, EndpointUpdate(labels={LABEL_KEY: tier_of(j, res.web)})
        )
        res.patch_s.append(time.monotonic() - t0)
        if updated.labels.get(LABEL_KEY) != tier_of(j, res.web):
            raise BenchError(f"endpoint {j}: labels not recorded ({updated.labels})")


def count_flows(
    stack: BenchStack,
    client: HttpControllerClient,
    hosts: Sequence[BenchHost],
    before: dict[str, int],
) -> dict[str, HostCount]:
    """With the first rule on every bridge: its flows there, and what the compiler makes
    of the controller's own state (GET /v1/acls, /v1/networks, /v1/endpoints)."""
    rules = tuple(AclRule.model_validate(r) for r in stack.get("/v1/acls"))
    all_networks = tuple(Network.model_validate(n) for n in stack.get("/v1/networks"))
    all_endpoints = tuple(Endpoint.model_validate(e) for e in stack.get("/v1/endpoints"))
    policy = Policy(rules, all_networks, all_endpoints)
    web_peers = len({e.address for e in all_endpoints if e.labels.get(LABEL_KEY) == WEB})
    counts: dict[str, HostCount] = {}
    for host in hosts:
        networks = client.list_networks(host.name)
        endpoints = client.list_endpoints(host.name)
        ports = stack.get(f"/v1/hosts/{host.name}")["ports"]
        peers = tunnel_peers_of(stack, host.name)
        with_rule = compute_bridge(networks, endpoints, ports, peers, policy)
        without = compute_bridge(networks, endpoints, ports, peers)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            acl_flows(networks, endpoints, policy)
            times.append(time.perf_counter() - t0)
        # what the POST's converge computes: the bridge with the rule, planned against
        # the bridge without it (the controller's copy; making that copy is not timed)
        held_state = normalized_state(without)
        held = (
            [SwitchFlow(f) for f in held_state.flows],
            [SwitchGroup(g) for g in held_state.groups],
        )
        pipeline = []
        for _ in range(3):
            t0 = time.perf_counter()
            todo = plan(
                normalized_state(compute_bridge(networks, endpoints, ports, peers, policy)), *held
            )
            pipeline.append(time.perf_counter() - t0)
            if (
                len(todo.flow_adds) != len(with_rule.flows) - len(without.flows)
                or todo.flow_deletes
            ):
                raise BenchError(f"{host.name}: the planned POST is not just the rule's flows")
        kinds = Counter(f.cookie >> COOKIE_KIND_SHIFT for f in with_rule.flows)
        parts = acl_cookie_flows(host)
        counts[host.name] = HostCount(
            endpoints=len(endpoints),
            db_here=sum(e.labels.get(LABEL_KEY) == DB for e in endpoints),
            web_peers=web_peers,
            networks=len(networks),
            flows_before=before[host.name],
            flows_with=host.flow_count(),
            acl_flows=parts["total"],
            parts=parts,
            computed_acl=kinds[CookieKind.ACL],
            computed_delta=len(with_rule.flows) - len(without.flows),
            compile_s=median(times),
            pipeline_s=median(pipeline),
        )
    return counts


def cycles(
    stack: BenchStack,
    client: HttpControllerClient,
    api: Api,
    hosts: Sequence[BenchHost],
    n: int,
    res: Results,
) -> None:
    names = [h.name for h in hosts]
    before = {h.name: h.flow_count() for h in hosts}
    log(f"{n} add/delete cycles of the rule (priorities {FIRST_PRIORITY}-{FIRST_PRIORITY + n - 1})")
    for i in range(n):
        priority = FIRST_PRIORITY + i
        rule_id = f"web-db-{priority}"
        base, base_conv = api.reconcile_all(names)
        post = api.timed("POST", "/v1/acls", rule_body(rule_id, priority), 201)
        if i == 0:  # untimed, between two timed calls
            res.counts = count_flows(stack, client, hosts, before)
        verify, verify_conv = api.reconcile_all(names)
        delete = api.timed("DELETE", f"/v1/acls/{rule_id}", None, 204)
        after = {h.name: h.flow_count() for h in hosts}
        if after != before:
            raise BenchError(f"cycle {i + 1}: flows after the DELETE {after}, before {before}")
        res.cycles.append(Cycle(priority, base, base_conv, post, verify, verify_conv, delete))
        log(f"  cycle {i + 1}: POST {ms(post.seconds)} ms, DELETE {ms(delete.seconds)} ms")
    left = {h.name: acl_cookie_flows(h)["total"] for h in hosts}
    if any(left.values()):
        raise BenchError(f"ACL flows left after the last DELETE: {left}")
    attribute_converges(stack.log_bytes(), [c.post for c in res.cycles])
    attribute_converges(stack.log_bytes(), [c.delete for c in res.cycles])


@contextlib.contextmanager
def rig(hosts: int) -> Iterator[tuple[BenchStack, list[BenchHost], HttpControllerClient]]:
    """scale.py's controller and bridges; everything removed afterwards, also on errors,
    Ctrl-C, SIGTERM and the time bound (the controller log's tail is printed then)."""
    workdir = Path(tempfile.mkdtemp(prefix="qlbench-acl-"))
    stack = BenchStack(workdir, host_names=())
    bench_hosts = [BenchHost(stack, f"acl{i + 1}", i) for i in range(hosts)]
    client = HttpControllerClient(stack.api_url, token_file=stack.token_file, timeout=30)
    ok = False
    try:
        yield stack, bench_hosts, client
        ok = True
    finally:
        with cleanup_shielded():
            with contextlib.suppress(Exception):
                client.close()
            for host in bench_hosts:
                host.close()
            with contextlib.suppress(Exception):
                stack.close()
            if not ok and stack.controller is not None:
                with contextlib.suppress(Exception):
                    log(f"the failed run's controller log ends:\n{stack.controller.tail(12)}")
            shutil.rmtree(workdir, ignore_errors=True)


def measure(web: int, db: int, hosts: int, n_cycles: int) -> int:
    opts = Options(
        endpoints=web + db,
        hosts=hosts,
        networks=hosts,
        model=NetworkModel.NONAT,
        baseline=1,
        extra=0,
    )
    with rig(hosts) as (stack, bench_hosts, client):
        base = setup(opts, stack, bench_hosts, client)
        res = Results([h.name for h in bench_hosts], web, db, base.setup_s)
        register(stack, client, base.planned, res)
        api = Api(stack)
        try:
            cycles(stack, client, api, bench_hosts, n_cycles, res)
        finally:
            api.close()
    report(res)
    return 0


# ---- the report -----------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "-"


def clauses(parts: Counter[str]) -> str:
    """The rule's flows as the conjunctive match's parts, then those without conjunction."""
    text = f"{parts['1/2']}+{parts['2/2']}+{parts['conj_id']}"
    return text + (f" (+{parts['other']} plain)" if parts["other"] else "")


def report(res: Results) -> None:
    counts = res.counts
    n = res.web + res.db
    print()
    print(
        f"acl: one ingress rule {LABEL_KEY}={WEB} -> {LABEL_KEY}={DB} tcp/{PORT} (stateful, "
        f"allow), {res.web} web + {res.db} db endpoints, {len(res.hosts)} hosts with one nonat "
        "network each (real controller; one OVS per host, userspace datapath; no Docker)"
    )
    print(
        f"setup: bridges connected in {res.setup_s[0]:.1f} s; networks and {n} ports in "
        f"{res.setup_s[1]:.1f} s; {n} registrations in {res.register_s:.1f} s (PUT p50 "
        f"{ms(median(res.put_s))} ms, last 50 {ms(median(res.put_s[-50:]))} ms); {n} label "
        f"PATCHes, p50 {ms(median(res.patch_s))} ms (no rule yet: no converge)"
    )
    print()
    print(
        "the rule's flows per bridge (ovs-ofctl dump-flows, cookie top byte 0x04); N: the "
        "host's own db endpoints (the selected side of an ingress rule), M: every web address "
        "(the peer side); naive: one flow per (web, db) pair; predicted: the compiler's "
        "N + M + 1; dst+src+conj_id: the flows of the conjunction's clause 1/2 (ipv4_dst), "
        "2/2 (ipv4_src) and the conj_id verdict; fixed: the other flows the rule brought"
    )
    rows = []
    for name in res.hosts:
        c = counts[name]
        naive = c.db_here * c.web_peers
        predicted = c.predicted
        fixed = c.flows_with - c.flows_before - c.acl_flows
        fixed_pred = FIXED_ACL_FLOWS + PER_NETWORK_ACL_FLOWS * c.networks
        rows.append(
            [
                name,
                str(c.endpoints),
                str(c.db_here),
                str(c.web_peers),
                f"{naive:,}",
                str(predicted),
                str(c.acl_flows),
                clauses(c.parts),
                ratio(c.acl_flows, predicted),
                "yes" if c.computed_acl == c.acl_flows else f"NO ({c.computed_acl})",
                f"{c.acl_flows / naive:.4f}" if naive else "-",
                f"{fixed} / {fixed_pred}"
                + ("" if fixed + c.acl_flows == c.computed_delta else f" (NO: {c.computed_delta})"),
                f"{c.flows_before} -> {c.flows_with}",
            ]
        )
    total_acl = sum(c.acl_flows for c in counts.values())
    total_pred = sum(c.predicted for c in counts.values())
    pairs = res.web * res.db
    rows.append(
        [
            "total",
            str(sum(c.endpoints for c in counts.values())),
            str(sum(c.db_here for c in counts.values())),
            str(res.web),
            f"{pairs:,}",
            str(total_pred),
            str(total_acl),
            clauses(sum((c.parts for c in counts.values()), Counter())),
            ratio(total_acl, total_pred),
            "",
            f"{total_acl / pairs:.4f}" if pairs else "-",
            "",
            f"{sum(c.flows_before for c in counts.values())} -> "
            f"{sum(c.flows_with for c in counts.values())}",
        ]
    )
    headers = ["host", "endpoints", "N (db)", "M (web)", "naive N*M", "predicted", "ACL flows"]
    headers += ["dst+src+conj_id"]
    headers += ["/ predicted", "= compute_bridge", "/ naive", "fixed / predicted", "bridge flows"]
    print(table(headers, rows))
    print(
        f"cluster: {total_acl} rule flows for {pairs:,} (web, db) pairs, "
        f"{pairs / max(1, total_acl):.0f}x fewer than one flow per pair; fixed: the ACL tables' "
        f"{FIXED_ACL_FLOWS} (+inv, +est/+rel) and {PER_NETWORK_ACL_FLOWS} per network (ct "
        "entry, default verdict) that come with the first rule, cookie top byte 0x01/0x02; "
        "compiling the ACL flows of one bridge in this process (acl_flows, median of 3): "
        + ", ".join(f"{ms(counts[h].compile_s)} ms" for h in res.hosts)
    )

    cyc = res.cycles
    base = [c.baseline for c in cyc]
    b50 = median(base)
    k = len(res.hosts)
    print()
    print(
        f"applying the rule on {k} hosts, {len(cyc)} add/delete cycles (priorities "
        f"{cyc[0].priority}-{cyc[-1].priority}), ms. Baseline: a no-op POST "
        f"/v1/hosts/H/reconcile of each of the {k} hosts, one after the other, just before "
        "each POST (each reads the bridge's flows and groups back and finds nothing to send)"
    )

    def row(name: str, values: Sequence[float], converge: Sequence[float]) -> list[str]:
        return [
            name,
            str(len(values)),
            ms(median(values)),
            ms(min(values)),
            ms(max(values)),
            ms(median(converge)),
            ms(median([v - c for v, c in zip(values, converge, strict=True)])),
            ratio(median(values), b50),
            f"{median([v / b for v, b in zip(values, base, strict=True)]):.3f}",
        ]

    rows = [
        row(f"baseline: {k} reconciles, no rule", base, [c.baseline_converge for c in cyc]),
        row("POST /v1/acls", [c.post.seconds for c in cyc], [c.post.converge_s for c in cyc]),
        row(f"{k} reconciles, rule on", [c.verify for c in cyc], [c.verify_converge for c in cyc]),
        row(
            "DELETE /v1/acls/{id}",
            [c.delete.seconds for c in cyc],
            [c.delete.converge_s for c in cyc],
        ),
    ]
    headers = ["call", "n", "p50", "min", "max", "converge p50", "outside p50", "p50 / baseline"]
    print(table([*headers, "p50 of cycle ratios"], rows))
    mods = median([c.flows_with - c.flows_before for c in counts.values()])
    post_one = median([c.post.converge_s / max(1, c.post.converges) for c in cyc])
    pipeline = median([c.pipeline_s for c in counts.values()])
    print(
        "converge: the controller's own time for the hosts' converges during the call (POST/"
        "DELETE: its log lines, only those that changed a bridge; reconcile: the replies' "
        "seconds); outside: the rest (HTTP, store, checks); cycle ratios: each call against "
        "the baseline of its own cycle. POST and DELETE converge every registered host in "
        "turn, trusting the controller's copy of each bridge (no read-back), and send "
        f"{mods:.0f} flow adds/deletes per bridge, then wait for a barrier. Converges per "
        f"call: POST {median([c.post.converges for c in cyc]):.0f}, DELETE "
        f"{median([c.delete.converges for c in cyc]):.0f}. One POST converge, p50: "
        f"{ms(post_one)} ms, of which compute_bridge + normalized_state + plan {ms(pipeline)} "
        f"ms ({pipeline / post_one:.0%}; timed in this process, median of 3 per host); the "
        "rest: the store reads, encoding and sending the mods, the barrier. After every POST "
        f"the {k} reconciles found nothing to change; after every DELETE every bridge had "
        "its flow count from before the rule, and after the last no flow with a 0x04 cookie"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--web", type=int, default=300, help="endpoints labelled tier=web")
    parser.add_argument("--db", type=int, default=300, help="endpoints labelled tier=db")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=5, help="add/delete cycles of the rule")
    parser.add_argument("--timeout", type=float, default=240.0, help="bound of the whole run, s")
    args = parser.parse_args(argv)
    if args.web < 1 or args.db < 1 or args.hosts < 1 or args.cycles < 1:
        parser.error("--web, --db, --hosts and --cycles must be at least 1")
    if args.cycles > 4000 - FIRST_PRIORITY + 1:
        parser.error("too many cycles for the ACL priorities")
    if -(-(args.web + args.db) // args.hosts) > 250:
        parser.error("too many endpoints per host for a /24 (one network per host)")
    try:
        with bounded(args.timeout):
            return measure(args.web, args.db, args.hosts, args.cycles)
    except BenchError as exc:
        print(f"acl: FAILED: {exc}", file=sys.stderr)
    except (
        QingluanError,
        OvsError,
        TimeoutError,
        httpx.HTTPError,
        subprocess.SubprocessError,
        OSError,
    ) as exc:
        print(f"acl: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("acl: interrupted (everything it started is removed)", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
