"""Traffic monitoring in the controller: export settings, the embedded sFlow collector's
view of the cluster, thresholds and their reactions.

- **Settings** (``GET/PUT /v1/monitoring/settings``): what every driver configures on
  its bridge (sFlow sampling, polling, header size, targets; NetFlow and IPFIX
  targets). Drivers read them every few seconds and apply changes.
- **Attribution**: a sample's agent is a host (learned from the OpenFlow-port counter
  record, datapath id -> host); its input ifIndex a port of that host (port-name
  record), and the port an endpoint, network and container. Samples of ports not
  named yet are attributed by source MAC.
- **Thresholds** (``/v1/monitoring/thresholds``): a flow whose rate over the last few
  seconds crosses one raises a ``ThresholdEvent`` once per evaluation; the reactor
  turns it into an automatic steering rule (drop or rate-limit) that goes once the
  flow has been quiet for the threshold's ``quiet_seconds``. sFlow-RT's events take the
  same path.

Store layout: ``settings/monitoring`` MonitoringSettings, ``thresholds/<id>`` Threshold.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

from qingluan.api_schema import FlowView, InterfaceView, RtFlowView, ThresholdCreate
from qingluan.controller.metrics import EndpointTraffic, Metrics
from qingluan.controller.monitor.collector import SflowCollector
from qingluan.controller.monitor.reactions import Reaction, Reactor, SteeringSink, ThresholdEvent
from qingluan.controller.monitor.sflow import Datagram
from qingluan.controller.monitor.sflowrt import SflowRtClient
from qingluan.controller.monitor.traffic import FlowEstimate, FlowKey, TrafficTable
from qingluan.controller.rule_ids import claim_id
from qingluan.controller.store import Store, load_all
from qingluan.errors import InvalidRequest, NotFound
from qingluan.model import AclProtocol, Endpoint, Host, MonitoringSettings, Network, Threshold

log = logging.getLogger(__name__)

SETTINGS_KEY = "settings/monitoring"


def load_settings(store: Store, collector_port: int) -> MonitoringSettings:
    doc = store.get(SETTINGS_KEY)
    settings = MonitoringSettings() if doc is None else MonitoringSettings.model_validate(doc)
    return settings.model_copy(update={"collector_port": collector_port})


def save_settings(store: Store, settings: MonitoringSettings, collector_port: int) -> None:
    if "collector_port" in settings.model_fields_set and settings.collector_port != collector_port:
        raise InvalidRequest(
            f"collector_port: the embedded collector listens on {collector_port} (the "
            "controller's --sflow-port), it cannot be changed here"
        )
    with store.transaction() as tx:
        tx.put(SETTINGS_KEY, settings.model_copy(update={"collector_port": collector_port}))


# ---- thresholds ----------------------------------------------------------------------

THRESHOLDS = "thresholds/"
_PROTO_NAMES = {1: AclProtocol.ICMP, 6: AclProtocol.TCP, 17: AclProtocol.UDP}


def threshold_reaction(threshold: Threshold) -> Reaction:
    return Reaction(
        threshold=threshold.id,
        action=threshold.action,
        rate_kbps=threshold.rate_kbps,
        burst_kbits=threshold.burst_kbits,
        quiet_seconds=threshold.quiet_seconds,
        priority_base=EMBEDDED_PRIORITY_BASE,
        priority_slots=EMBEDDED_PRIORITY_SLOTS,
    )


# automatic rules of thresholds: ids auto-<priority> (the reactor's default prefix),
# priorities 3900-3949; sFlow-RT's are in qingluan.controller.sflowrt_setup
EMBEDDED_PRIORITY_BASE, EMBEDDED_PRIORITY_SLOTS = 3900, 50


def selects(threshold: Threshold, key: FlowKey) -> bool:
    """Whether ``threshold`` looks at flows like ``key`` at all: IPv4, its protocol."""
    if threshold.protocol is not AclProtocol.ANY and (
        _PROTO_NAMES.get(key.ip_proto or -1) is not threshold.protocol
    ):
        return False
    return key.ipv4_src is not None or key.ipv4_dst is not None


def crossing(threshold: Threshold, flow: FlowEstimate) -> bool:
    if not selects(threshold, flow.key):
        return False
    rate = flow.bytes_per_second if threshold.metric == "bytes" else flow.packets_per_second
    return rate >= threshold.value


def threshold_event(threshold: Threshold, flow: FlowEstimate, event_id: str) -> ThresholdEvent:
    key = flow.key
    rate = flow.bytes_per_second if threshold.metric == "bytes" else flow.packets_per_second
    return ThresholdEvent(
        source="embedded",
        threshold=threshold.id,
        event_id=event_id,
        ipv4_src=key.ipv4_src,
        ipv4_dst=key.ipv4_dst,
        protocol=_PROTO_NAMES.get(key.ip_proto or -1, AclProtocol.ANY),
        dst_port=key.dst_port,
        value=rate,
        agent=key.agent,
    )


# ---- attribution ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """Hosts, networks and endpoints as the collector's attribution needs them."""

    host_by_dpid: dict[int, str]
    endpoints_by_mac: dict[str, Endpoint]
    endpoints_by_port: dict[tuple[str, str], Endpoint]  # (host, port name)
    networks: dict[str, Network]

    @classmethod
    def of(
        cls, hosts: Sequence[Host], networks: Sequence[Network], endpoints: Sequence[Endpoint]
    ) -> Cluster:
        return cls(
            host_by_dpid={h.dpid: h.name for h in hosts},
            endpoints_by_mac={e.mac: e for e in endpoints},
            endpoints_by_port={(e.host, e.port_name): e for e in endpoints},
            networks={n.id: n for n in networks},
        )

    def network_name(self, endpoint: Endpoint | None) -> str | None:
        if endpoint is None:
            return None
        network = self.networks.get(endpoint.network_id)
        return (network.name or network.id[:12]) if network is not None else None


class MonitoringService:
    """Settings, the embedded collector's attribution, thresholds and reactions."""

    def __init__(
        self,
        store: Store,
        cluster: Callable[[], Cluster],
        sink: SteeringSink,
        *,
        collector_port: int = 6343,
        table: TrafficTable | None = None,
        observer: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._cluster = cluster
        self._port = collector_port
        self.table = table or TrafficTable()
        self._observer = observer
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: dict[tuple[str, str], EndpointTraffic] = {}  # (agent, eth_src)
        self._events = 0
        self.reactor = Reactor(sink, [threshold_reaction(t) for t in self.list_thresholds()],
                               clock=clock)  # fmt: skip
        self.recent_events: list[ThresholdEvent] = []
        self.collector: SflowCollector | None = None  # set when it runs
        self.rt_client: SflowRtClient | None = None  # set with --sflow-rt

    def decode_errors(self) -> int:
        return self.collector.decode_errors if self.collector is not None else 0

    # ---- settings ----

    def settings(self) -> MonitoringSettings:
        return load_settings(self._store, self._port)

    def update_settings(self, settings: MonitoringSettings) -> MonitoringSettings:
        save_settings(self._store, settings, self._port)
        return self.settings()

    # ---- samples in ----

    def on_datagram(self, datagram: Datagram) -> None:
        """Per (agent, source MAC) totals that only grow (the table forgets idle flows)."""
        with self._lock:
            for sample in datagram.packets:
                traffic = self._sent.setdefault((sample.agent, sample.eth_src), EndpointTraffic())
                traffic.packets += sample.sampling_rate
                traffic.bytes += sample.sampling_rate * sample.frame_length

    def _host_of(self, agent: str, cluster: Cluster) -> str | None:
        dpid = self.table.agent_dpid(agent)  # from the agent's OpenFlow-port records
        return cluster.host_by_dpid.get(dpid) if dpid is not None else None

    def sent_by_endpoint(self) -> dict[str, EndpointTraffic]:
        """Endpoint id -> what it sent, as its own host's samples estimate it."""
        cluster = self._cluster()
        with self._lock:
            items = list(self._sent.items())
        out: dict[str, EndpointTraffic] = {}
        hosts: dict[str, str | None] = {}
        for (agent, mac), traffic in items:
            endpoint = cluster.endpoints_by_mac.get(mac)
            if endpoint is None:
                continue
            if agent not in hosts:
                hosts[agent] = self._host_of(agent, cluster)
            if hosts[agent] != endpoint.host:
                continue  # sampled again where it arrived: counted at its own host
            total = out.setdefault(endpoint.id, EndpointTraffic())  # the host's agents, summed
            total.bytes += traffic.bytes
            total.packets += traffic.packets
        return out

    def datagrams_by_host(self) -> dict[str, int]:
        cluster = self._cluster()
        out: dict[str, int] = {}
        for agent, stats in self.table.agents().items():
            count = stats.datagrams
            host = self._host_of(agent, cluster) or agent
            out[host] = out.get(host, 0) + count
        return out

    # ---- views ----

    def top_flows(
        self,
        *,
        by: str = "bytes",
        limit: int = 10,
        network: str | None = None,
        endpoint: str | None = None,
        host: str | None = None,
        window: float | None = None,
    ) -> list[FlowView]:
        if window is not None and window > self.table.window:
            raise InvalidRequest(
                f"window: the collector keeps {self.table.window:g} seconds of samples, "
                f"not {window:g}"
            )
        cluster = self._cluster()
        flows = self.table.top_flows(
            self._clock(), by="packets" if by == "packets" else "bytes", limit=100_000,
            window=window,
        )  # fmt: skip
        views = []
        for flow in flows:
            view = self._view(flow, cluster)
            if host is not None and view.host != host:
                continue
            if network is not None and network not in (view.network, view.network_id):
                continue
            if endpoint is not None and not _names_endpoint(view, endpoint):
                continue
            views.append(view)
            if len(views) >= limit:
                break
        return views

    def _view(self, flow: FlowEstimate, cluster: Cluster) -> FlowView:
        key = flow.key
        host = self._host_of(key.agent, cluster)
        src = cluster.endpoints_by_mac.get(key.eth_src)
        dst = cluster.endpoints_by_mac.get(key.eth_dst)
        names = self.table.port_names(key.agent)
        if src is None and host is not None:
            port = names.get(flow.input_if)
            src = cluster.endpoints_by_port.get((host, port)) if port else None
        owner = src or dst
        return FlowView(
            host=host,
            agent=key.agent,
            network=cluster.network_name(owner),
            network_id=owner.network_id if owner is not None else None,
            endpoint_src=src.id if src else None,
            container_src=src.container_name if src else None,
            endpoint_dst=dst.id if dst else None,
            container_dst=dst.container_name if dst else None,
            eth_src=key.eth_src,
            eth_dst=key.eth_dst,
            ipv4_src=key.ipv4_src,
            ipv4_dst=key.ipv4_dst,
            protocol=_proto_name(key.ip_proto),
            src_port=key.src_port,
            dst_port=key.dst_port,
            input_port=names.get(flow.input_if),
            bytes=flow.bytes,
            packets=flow.packets,
            bytes_per_second=flow.bytes_per_second,
            packets_per_second=flow.packets_per_second,
        )

    def interfaces(self) -> list[InterfaceView]:
        cluster = self._cluster()
        views = []
        for rate in self.table.interface_rates(self._clock()):
            host = cluster.host_by_dpid.get(rate.dpid) if rate.dpid is not None else None
            endpoint = (
                cluster.endpoints_by_port.get((host, rate.port_name))
                if host is not None and rate.port_name
                else None
            )
            views.append(
                InterfaceView(
                    host=host,
                    agent=rate.agent,
                    if_index=rate.if_index,
                    port_name=rate.port_name,
                    of_port=rate.of_port,
                    endpoint=endpoint.id if endpoint else None,
                    container=endpoint.container_name if endpoint else None,
                    network=cluster.network_name(endpoint),
                    in_bps=rate.in_bits_per_second or 0.0,
                    out_bps=rate.out_bits_per_second or 0.0,
                    in_pps=rate.in_packets_per_second or 0.0,
                    out_pps=rate.out_packets_per_second or 0.0,
                    in_octets=rate.counters.in_octets,
                    out_octets=rate.counters.out_octets,
                )
            )
        return sorted(views, key=lambda v: (v.host or v.agent, v.port_name or "", v.if_index))

    def status(self) -> dict[str, object]:
        return {
            "table": self.table.stats(),
            "datagrams_by_host": self.datagrams_by_host(),
            "reactions": [
                {
                    "rule": a.rule.id,
                    "flow": a.flow.describe(),
                    "source": a.source,
                    "events": a.events,
                }
                for a in self.reactor.active()
            ],
        }

    # ---- thresholds ----

    def list_thresholds(self) -> list[Threshold]:
        return sorted(load_all(self._store, THRESHOLDS, Threshold), key=lambda t: t.id)

    def create_threshold(self, body: ThresholdCreate) -> Threshold:
        with self._store.transaction() as tx:
            taken = (t.id for t in load_all(tx, THRESHOLDS, Threshold))
            threshold_id = claim_id(body.id, "threshold", taken, "threshold")
            threshold = Threshold(id=threshold_id, **body.model_dump(exclude={"id"}))
            tx.put(THRESHOLDS + threshold_id, threshold)
        self.reactor.set_reactions([threshold_reaction(t) for t in self.list_thresholds()])
        return threshold

    def delete_threshold(self, threshold_id: str) -> None:
        with self._store.transaction() as tx:
            tx.delete(THRESHOLDS + threshold_id)
        self.reactor.set_reactions([threshold_reaction(t) for t in self.list_thresholds()])

    def evaluate(self) -> list[ThresholdEvent]:
        """One look at the table: an event per flow over a threshold; then the reactor's
        quiet rules go."""
        events: list[ThresholdEvent] = []
        now = self._clock()
        for threshold in self.list_thresholds():
            by: Literal["bytes", "packets"] = (
                "packets" if threshold.metric == "packets" else "bytes"
            )
            flows = self.table.top_flows(
                now, by=by, limit=50, window=threshold.window, predicate=partial(selects, threshold)
            )
            for flow in flows:
                if not crossing(threshold, flow):
                    continue
                self._events += 1
                event = threshold_event(threshold, flow, str(self._events))
                events.append(event)
                if self._observer is not None:
                    self._observer.threshold_event(event.source, event.threshold)
                self.reactor.on_event(event)
        self.reactor.expire()
        if events:
            self.recent_events = (self.recent_events + events)[-100:]
        if self._observer is not None:
            self._observer.auto_rules(len(self.reactor.active()))
        return events

    def rt_active_flows(
        self, name: str, *, agent: str = "ALL", max_flows: int = 20
    ) -> list[RtFlowView]:
        if self.rt_client is None:
            raise NotFound("sFlow-RT is not configured: start the controller with --sflow-rt URL")
        return [
            RtFlowView(
                key=f.key,
                parts=list(f.parts),
                value=f.value,
                agent=f.agent,
                data_source=f.data_source,
            )
            for f in self.rt_client.active_flows(name, agent=agent, max_flows=max_flows)
        ]

    def on_rt_event(self, event: ThresholdEvent) -> None:
        if self._observer is not None:
            self._observer.threshold_event(event.source, event.threshold)
        self.recent_events = [*self.recent_events, event][-100:]


def _names_endpoint(view: FlowView, ref: str) -> bool:
    for candidate in (view.endpoint_src, view.endpoint_dst):
        if candidate and (candidate == ref or (len(ref) >= 12 and candidate.startswith(ref))):
            return True
    return ref in (view.container_src, view.container_dst)


def _proto_name(proto: int | None) -> str | None:
    if proto is None:
        return None
    known = _PROTO_NAMES.get(proto)
    return known.value if known is not None else str(proto)
