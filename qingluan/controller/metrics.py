"""Prometheus metrics of the controller (``GET /metrics``), named in ``metric_names``.

Events (reconciles, REST requests, IDS alerts, quarantines, threshold events) are
counted as they happen. The state of the cluster (bridges, per-endpoint traffic
from OpenFlow port stats and from sFlow) is read when Prometheus scrapes, through
a ``ClusterView`` of plain callables, so this module knows nothing of the store or
the switches and the numbers are never older than the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from qingluan.controller.metric_names import METRICS, MetricName
from qingluan.controller.ofvocab import PortCounters
from qingluan.model import Endpoint, IdsAction, Network, QuarantineScope

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BY_NAME = {m.name: m for m in METRICS}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIRM_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 5.0)


def _spec(name: str) -> MetricName:
    return _BY_NAME[name]


@dataclass
class EndpointTraffic:
    bytes: int = 0
    packets: int = 0


@dataclass
class ClusterView:
    """What a scrape reads; every callable may raise, which costs only its own metrics."""

    hosts: Callable[[], list[str]]
    connected: Callable[[str], bool]
    bridge_sizes: Callable[[str], tuple[int, int]]  # desired flows, groups
    endpoints: Callable[[], list[tuple[Endpoint, Network | None]]]
    port_counters: Callable[[str], Mapping[str, PortCounters]]
    sflow_sent: Callable[[], Mapping[str, EndpointTraffic]] = field(default=lambda: {})
    sflow_datagrams: Callable[[], Mapping[str, int]] = field(default=lambda: {})
    sflow_decode_errors: Callable[[], int] = field(default=lambda: 0)


def _labels(endpoint: Endpoint, network: Network | None) -> list[str]:
    net = (network.name or network.id[:12]) if network is not None else endpoint.network_id[:12]
    return [endpoint.host, net, endpoint.id[:12], endpoint.container_name or ""]


class _ClusterCollector(Collector):
    def __init__(self, view: ClusterView) -> None:
        self._view = view

    def _gauge(self, name: str) -> GaugeMetricFamily:
        spec = _spec(name)
        return GaugeMetricFamily(name, spec.help, labels=list(spec.labels))

    def _counter(self, name: str) -> CounterMetricFamily:
        spec = _spec(name)
        return CounterMetricFamily(name, spec.help, labels=list(spec.labels))

    def collect(self) -> Iterator[Metric]:
        view = self._view
        try:
            hosts = view.hosts()
        except Exception:
            log.exception("metrics: cannot list the hosts")
            hosts = []
        connected = self._gauge("qingluan_bridge_connected")
        flows = self._gauge("qingluan_bridge_flows")
        groups = self._gauge("qingluan_bridge_groups")
        up: list[str] = []
        for host in hosts:
            try:
                is_up = view.connected(host)
            except Exception as exc:
                log.warning("metrics: is host %s connected? %s", host, exc)
                continue
            connected.add_metric([host], 1.0 if is_up else 0.0)
            if is_up:
                up.append(host)
            try:
                n_flows, n_groups = view.bridge_sizes(host)
            except Exception as exc:
                log.warning("metrics: no bridge sizes of host %s: %s", host, exc)
                continue
            flows.add_metric([host], n_flows)
            groups.add_metric([host], n_groups)
        yield from (connected, flows, groups)
        try:
            endpoints = view.endpoints()
        except Exception:
            log.exception("metrics: cannot list the endpoints")
            endpoints = []
        yield from self._port_metrics(up, endpoints)
        yield from self._sflow_metrics(endpoints)

    def _port_metrics(
        self, hosts: list[str], endpoints: list[tuple[Endpoint, Network | None]]
    ) -> Iterator[Metric]:
        view = self._view
        families = {
            name: self._counter(name)
            for name in (
                "qingluan_endpoint_sent_bytes_total",
                "qingluan_endpoint_received_bytes_total",
                "qingluan_endpoint_sent_packets_total",
                "qingluan_endpoint_received_packets_total",
            )
        }
        by_host: dict[str, list[tuple[Endpoint, Network | None]]] = {}
        for endpoint, network in endpoints:
            by_host.setdefault(endpoint.host, []).append((endpoint, network))
        for host in hosts:
            try:
                counters = view.port_counters(host)
            except Exception as exc:
                log.warning("metrics: no port stats from host %s: %s", host, exc)
                continue
            for endpoint, network in by_host.get(host, []):
                c = counters.get(endpoint.port_name)
                if c is None:
                    continue
                labels = _labels(endpoint, network)
                # the bridge receives (rx) what the container sends
                families["qingluan_endpoint_sent_bytes_total"].add_metric(labels, c.rx_bytes)
                families["qingluan_endpoint_received_bytes_total"].add_metric(labels, c.tx_bytes)
                families["qingluan_endpoint_sent_packets_total"].add_metric(labels, c.rx_packets)
                families["qingluan_endpoint_received_packets_total"].add_metric(
                    labels, c.tx_packets
                )
        yield from families.values()

    def _sflow_metrics(self, endpoints: list[tuple[Endpoint, Network | None]]) -> Iterator[Metric]:
        view = self._view
        sent_bytes = self._counter("qingluan_sflow_sent_bytes_total")
        sent_packets = self._counter("qingluan_sflow_sent_packets_total")
        try:
            sent = view.sflow_sent()
        except Exception:
            log.exception("metrics: no sFlow estimates")
            sent = {}
        by_id = {e.id: (e, n) for e, n in endpoints}
        for endpoint_id, traffic in sent.items():
            found = by_id.get(endpoint_id)
            if found is None:
                continue
            labels = _labels(*found)
            sent_bytes.add_metric(labels, traffic.bytes)
            sent_packets.add_metric(labels, traffic.packets)
        yield from (sent_bytes, sent_packets)
        datagrams = self._counter("qingluan_sflow_datagrams_total")
        try:
            for host, count in view.sflow_datagrams().items():
                datagrams.add_metric([host], count)
        except Exception:
            log.exception("metrics: no sFlow datagram counts")
        else:
            yield datagrams
        try:
            decode_errors = view.sflow_decode_errors()
        except Exception:
            log.exception("metrics: no sFlow decode error count")
        else:
            errors = self._counter("qingluan_sflow_decode_errors_total")
            errors.add_metric([], decode_errors)
            yield errors


class Metrics:
    """The controller's registry; also the IDS service's observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        def histogram(name: str, buckets: tuple[float, ...]) -> Histogram:
            spec = _spec(name)
            return Histogram(name, spec.help, spec.labels, registry=r, buckets=buckets)

        def counter(name: str) -> Counter:
            spec = _spec(name)
            return Counter(name, spec.help, spec.labels, registry=r)

        def gauge(name: str) -> Gauge:
            spec = _spec(name)
            return Gauge(name, spec.help, spec.labels, registry=r)

        self._reconcile = histogram("qingluan_reconcile_duration_seconds", LATENCY_BUCKETS)
        self._reconcile_failures = counter("qingluan_reconcile_failures_total")
        self._rest = histogram("qingluan_rest_request_duration_seconds", LATENCY_BUCKETS)
        self._alerts = counter("qingluan_ids_alerts_total")
        self._quarantines_total = counter("qingluan_quarantines_total")
        self._quarantines_active = gauge("qingluan_quarantines_active")
        self._confirm = histogram("qingluan_quarantine_confirm_seconds", CONFIRM_BUCKETS)
        self._threshold_events = counter("qingluan_threshold_events_total")
        self._auto_rules = gauge("qingluan_auto_steering_rules")

    def watch_cluster(self, view: ClusterView) -> None:
        self.registry.register(_ClusterCollector(view))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ---- events ----

    def reconcile(self, host: str, trigger: str, seconds: float | None) -> None:
        if seconds is None:
            self._reconcile_failures.labels(host).inc()
        else:
            self._reconcile.labels(host, trigger).observe(seconds)

    def rest(self, method: str, route: str, status: int, seconds: float) -> None:
        self._rest.labels(method, route, str(status)).observe(seconds)

    def alert(self, host: str, severity: int, action: IdsAction) -> None:
        self._alerts.labels(host, str(severity), action.value).inc()

    def quarantined(self, scope: QuarantineScope, confirm_seconds: float | None) -> None:
        self._quarantines_total.labels(scope.value).inc()
        if confirm_seconds is not None:
            self._confirm.observe(confirm_seconds)

    def quarantines_active(self, count: int) -> None:
        self._quarantines_active.set(count)

    def threshold_event(self, source: str, threshold: str) -> None:
        self._threshold_events.labels(source, threshold).inc()

    def auto_rules(self, count: int) -> None:
        self._auto_rules.set(count)
