"""The controller's Prometheus exposition, read back with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from qingluan.controller.metric_names import METRIC_NAMES, METRICS
from qingluan.controller.metrics import ClusterView, EndpointTraffic, Metrics
from qingluan.controller.ofvocab import PortCounters
from qingluan.model import (
    Endpoint,
    IdsAction,
    Network,
    NetworkModel,
    QuarantineScope,
)

WEB = Network(
    id="f" * 64,
    key=1,
    host="h1",
    model=NetworkModel.NAT,
    pool_id="p1",
    subnet="10.0.0.0/24",
    gateway="10.0.0.1",
    gateway_mac="02:00:00:00:00:01",
    name="web",
)
EP_A = Endpoint(
    id="a" * 64,
    network_id=WEB.id,
    host="h1",
    mac="02:00:00:00:00:0a",
    address="10.0.0.10",
    port_name="qlvaaaaaaaaaaaa",
    container_name="client",
)
EP_B = Endpoint(
    id="b" * 64,
    network_id=WEB.id,
    host="h2",
    mac="02:00:00:00:00:0b",
    address="10.0.0.11",
    port_name="qlvbbbbbbbbbbbb",
    container_name="server",
)
# on h1 too, in a network the view does not know, without a container name
EP_C = Endpoint(
    id="c" * 64,
    network_id="e" * 64,
    host="h1",
    mac="02:00:00:00:00:0c",
    address="10.0.0.12",
    port_name="qlvcccccccccccc",
)


def exported(metrics: Metrics) -> dict[str, list[Sample]]:
    """Family name (as METRIC_NAMES spells it) -> samples; fails on any unknown family."""
    out: dict[str, list[Sample]] = {}
    created: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        name = family.name + "_total" if family.type == "counter" else family.name
        if name not in METRIC_NAMES and name.endswith("_created"):
            created.add(name.removesuffix("_created"))  # prometheus_client's companions
            continue
        assert name in METRIC_NAMES, f"{name} is exported but not in metric_names"
        out[name] = family.samples
    for base in created:  # each belongs to a counter or histogram that is exported
        assert base in out or base + "_total" in out, base
    return out


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return float(found[0])


def by_labels(samples: list[Sample]) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[k] for k in sorted(s.labels)): s.value for s in samples}


def counters(rx_bytes: int, tx_bytes: int, rx_packets: int, tx_packets: int) -> PortCounters:
    return PortCounters(
        port_no=1,
        rx_packets=rx_packets,
        tx_packets=tx_packets,
        rx_bytes=rx_bytes,
        tx_bytes=tx_bytes,
        rx_dropped=0,
        tx_dropped=0,
    )


class FakeCluster:
    """The callables of a ClusterView; ``broken`` names those that raise."""

    def __init__(self, *broken: str) -> None:
        self.broken = set(broken)
        self.port_counter_calls: list[str] = []
        self.decode_errors = 2

    def _check(self, what: str) -> None:
        if what in self.broken:
            raise RuntimeError(f"{what} is away")

    def hosts(self) -> list[str]:
        self._check("hosts")
        return ["h1", "h2"]

    def connected(self, host: str) -> bool:
        self._check("connected")
        return host == "h1"

    def bridge_sizes(self, host: str) -> tuple[int, int]:
        self._check("bridge_sizes")
        return (120, 4) if host == "h1" else (7, 1)

    def endpoints(self) -> list[tuple[Endpoint, Network | None]]:
        self._check("endpoints")
        return [(EP_A, WEB), (EP_B, WEB), (EP_C, None)]

    def port_counters(self, host: str) -> Mapping[str, PortCounters]:
        self.port_counter_calls.append(host)
        self._check("port_counters")
        return {
            EP_A.port_name: counters(rx_bytes=5000, tx_bytes=700, rx_packets=50, tx_packets=7),
            EP_C.port_name: counters(rx_bytes=1, tx_bytes=2, rx_packets=3, tx_packets=4),
            EP_B.port_name: counters(rx_bytes=9, tx_bytes=9, rx_packets=9, tx_packets=9),
        }

    def sflow_sent(self) -> Mapping[str, EndpointTraffic]:
        self._check("sflow_sent")
        return {
            EP_A.id: EndpointTraffic(bytes=4800, packets=48),
            "gone" * 16: EndpointTraffic(1, 1),
        }

    def sflow_datagrams(self) -> Mapping[str, int]:
        self._check("sflow_datagrams")
        return {"h1": 54, "10.77.9.9": 3}

    def sflow_decode_errors(self) -> int:
        self._check("sflow_decode_errors")
        return self.decode_errors

    def view(self) -> ClusterView:
        return ClusterView(
            hosts=self.hosts,
            connected=self.connected,
            bridge_sizes=self.bridge_sizes,
            endpoints=self.endpoints,
            port_counters=self.port_counters,
            sflow_sent=self.sflow_sent,
            sflow_datagrams=self.sflow_datagrams,
            sflow_decode_errors=self.sflow_decode_errors,
        )


def watched(*broken: str) -> tuple[Metrics, FakeCluster]:
    metrics = Metrics()
    cluster = FakeCluster(*broken)
    metrics.watch_cluster(cluster.view())
    cluster.port_counter_calls.clear()  # registering looks at the metrics once
    return metrics, cluster


A_LABELS = {"host": "h1", "network": "web", "endpoint": "a" * 12, "container": "client"}
C_LABELS = {"host": "h1", "network": "e" * 12, "endpoint": "c" * 12, "container": ""}


# ---- events ---------------------------------------------------------------------------


def test_the_table_of_names_is_consistent() -> None:
    assert len(METRIC_NAMES) == len(METRICS)
    assert all(m.kind in ("counter", "gauge", "histogram") for m in METRICS)
    assert all(m.name.endswith("_total") == (m.kind == "counter") for m in METRICS)


def test_nothing_observed_yet_exports_only_known_names() -> None:
    out = exported(Metrics())
    assert value(out["qingluan_quarantines_active"], "qingluan_quarantines_active") == 0
    assert value(out["qingluan_auto_steering_rules"], "qingluan_auto_steering_rules") == 0
    assert out["qingluan_ids_alerts_total"] == []  # labelled: nothing until the first


def test_reconciles_are_timed_and_failures_counted() -> None:
    m = Metrics()
    m.reconcile("h1", "connect", 0.02)
    m.reconcile("h1", "connect", 0.2)
    m.reconcile("h1", "resync", None)  # failed: counted, not timed
    out = exported(m)
    hist = out["qingluan_reconcile_duration_seconds"]
    name = "qingluan_reconcile_duration_seconds"
    assert value(hist, name + "_count", host="h1", trigger="connect") == 2
    assert value(hist, name + "_sum", host="h1", trigger="connect") == pytest.approx(0.22)
    assert value(hist, name + "_bucket", host="h1", trigger="connect", le="0.025") == 1
    assert value(hist, name + "_bucket", host="h1", trigger="connect", le="0.25") == 2
    assert not any(s.labels.get("trigger") == "resync" for s in hist)
    failures = out["qingluan_reconcile_failures_total"]
    assert value(failures, "qingluan_reconcile_failures_total", host="h1") == 1


def test_rest_requests_are_timed_by_method_route_and_status() -> None:
    m = Metrics()
    m.rest("GET", "/v1/quarantines/{quarantine_id}", 404, 0.003)
    m.rest("POST", "/v1/ids/alerts", 200, 0.04)
    hist = exported(m)["qingluan_rest_request_duration_seconds"]
    name = "qingluan_rest_request_duration_seconds"
    labels = {"method": "GET", "route": "/v1/quarantines/{quarantine_id}", "status": "404"}
    assert value(hist, name + "_bucket", **labels, le="0.0025") == 0
    assert value(hist, name + "_bucket", **labels, le="0.005") == 1
    assert value(hist, name + "_count", method="POST", route="/v1/ids/alerts", status="200") == 1


def test_the_ids_observer() -> None:
    m = Metrics()
    m.alert("h1", 1, IdsAction.QUARANTINE)
    m.alert("h1", 1, IdsAction.QUARANTINE)
    m.alert("h2", 3, IdsAction.LOG)
    m.quarantined(QuarantineScope.ENDPOINT, 0.03)
    m.quarantined(QuarantineScope.FLOW, None)  # bridge away: applied, not confirmed
    m.quarantines_active(2)
    m.threshold_event("embedded", "elephant")
    m.auto_rules(3)
    out = exported(m)
    assert by_labels(out["qingluan_ids_alerts_total"]) == {
        ("quarantine", "h1", "1"): 2,
        ("log", "h2", "3"): 1,
    }
    assert by_labels(out["qingluan_quarantines_total"]) == {("endpoint",): 1, ("flow",): 1}
    confirm = out["qingluan_quarantine_confirm_seconds"]
    assert value(confirm, "qingluan_quarantine_confirm_seconds_count") == 1
    assert value(confirm, "qingluan_quarantine_confirm_seconds_bucket", le="0.03") == 1
    assert value(confirm, "qingluan_quarantine_confirm_seconds_bucket", le="0.02") == 0
    assert value(out["qingluan_quarantines_active"], "qingluan_quarantines_active") == 2
    assert by_labels(out["qingluan_threshold_events_total"]) == {("embedded", "elephant"): 1}
    assert value(out["qingluan_auto_steering_rules"], "qingluan_auto_steering_rules") == 3


# ---- the cluster, read at each scrape -------------------------------------------------


def test_a_scrape_reads_bridges_port_stats_and_sflow() -> None:
    metrics, cluster = watched()
    out = exported(metrics)
    assert by_labels(out["qingluan_bridge_connected"]) == {("h1",): 1, ("h2",): 0}
    assert by_labels(out["qingluan_bridge_flows"]) == {("h1",): 120, ("h2",): 7}
    assert by_labels(out["qingluan_bridge_groups"]) == {("h1",): 4, ("h2",): 1}
    # only a connected bridge is asked for its port stats
    assert cluster.port_counter_calls == ["h1"]
    # what the container sends is what the bridge port receives (rx), and back
    sent = out["qingluan_endpoint_sent_bytes_total"]
    assert value(sent, "qingluan_endpoint_sent_bytes_total", **A_LABELS) == 5000
    assert value(sent, "qingluan_endpoint_sent_bytes_total", **C_LABELS) == 1
    received = out["qingluan_endpoint_received_bytes_total"]
    assert value(received, "qingluan_endpoint_received_bytes_total", **A_LABELS) == 700
    packets = out["qingluan_endpoint_sent_packets_total"]
    assert value(packets, "qingluan_endpoint_sent_packets_total", **A_LABELS) == 50
    back = out["qingluan_endpoint_received_packets_total"]
    assert value(back, "qingluan_endpoint_received_packets_total", **A_LABELS) == 7
    # B is on h2 (away): h1's port of the same name would not be B's
    assert len(sent) == 2 and all(s.labels["endpoint"] != "b" * 12 for s in sent)
    # sFlow estimates: known endpoints only
    sflow = out["qingluan_sflow_sent_bytes_total"]
    assert [(s.labels, s.value) for s in sflow] == [(A_LABELS, 4800)]
    assert (
        value(
            out["qingluan_sflow_sent_packets_total"],
            "qingluan_sflow_sent_packets_total",
            **A_LABELS,
        )
        == 48
    )
    assert by_labels(out["qingluan_sflow_datagrams_total"]) == {("h1",): 54, ("10.77.9.9",): 3}
    assert (
        value(out["qingluan_sflow_decode_errors_total"], "qingluan_sflow_decode_errors_total") == 2
    )


def test_the_numbers_are_read_at_each_scrape() -> None:
    metrics, cluster = watched()
    errors = "qingluan_sflow_decode_errors_total"
    assert value(exported(metrics)[errors], errors) == 2
    cluster.decode_errors = 5
    assert value(exported(metrics)[errors], errors) == 5
    assert cluster.port_counter_calls == ["h1", "h1"]  # once per scrape


ALL_CLUSTER = {
    "qingluan_bridge_connected",
    "qingluan_bridge_flows",
    "qingluan_bridge_groups",
    "qingluan_endpoint_sent_bytes_total",
    "qingluan_endpoint_received_bytes_total",
    "qingluan_endpoint_sent_packets_total",
    "qingluan_endpoint_received_packets_total",
    "qingluan_sflow_sent_bytes_total",
    "qingluan_sflow_sent_packets_total",
    "qingluan_sflow_datagrams_total",
    "qingluan_sflow_decode_errors_total",
}
PORT_FAMILIES = {n for n in ALL_CLUSTER if n.startswith("qingluan_endpoint_")}
SFLOW_SENT = {"qingluan_sflow_sent_bytes_total", "qingluan_sflow_sent_packets_total"}


def non_empty(out: dict[str, list[Sample]]) -> set[str]:
    return {name for name, samples in out.items() if samples and name in ALL_CLUSTER}


@pytest.mark.parametrize(
    ("broken", "lost"),
    [
        (
            "hosts",
            {
                "qingluan_bridge_connected",
                "qingluan_bridge_flows",
                "qingluan_bridge_groups",
                *PORT_FAMILIES,
            },
        ),
        (
            "connected",
            {
                "qingluan_bridge_connected",
                "qingluan_bridge_flows",
                "qingluan_bridge_groups",
                *PORT_FAMILIES,
            },
        ),
        ("bridge_sizes", {"qingluan_bridge_flows", "qingluan_bridge_groups"}),
        ("port_counters", PORT_FAMILIES),
        ("endpoints", PORT_FAMILIES | SFLOW_SENT),
        ("sflow_sent", SFLOW_SENT),
        ("sflow_datagrams", {"qingluan_sflow_datagrams_total"}),
        ("sflow_decode_errors", {"qingluan_sflow_decode_errors_total"}),
    ],
)
def test_a_callable_that_raises_costs_only_its_own_metrics(broken: str, lost: set[str]) -> None:
    metrics, _ = watched(broken)
    metrics.alert("h1", 1, IdsAction.LOG)
    out = exported(metrics)
    assert non_empty(out) == ALL_CLUSTER - lost
    assert by_labels(out["qingluan_ids_alerts_total"]) == {("log", "h1", "1"): 1}


def test_a_raising_view_does_not_stop_the_controller_from_registering_it() -> None:
    for broken in ("connected", "bridge_sizes", "sflow_datagrams", "sflow_decode_errors"):
        metrics = Metrics()
        metrics.watch_cluster(FakeCluster(broken).view())  # registration scrapes once
        assert metrics.render()


def test_the_default_sflow_callables_export_zero_errors() -> None:
    cluster = FakeCluster()
    metrics = Metrics()
    metrics.watch_cluster(
        ClusterView(
            hosts=cluster.hosts,
            connected=cluster.connected,
            bridge_sizes=cluster.bridge_sizes,
            endpoints=cluster.endpoints,
            port_counters=cluster.port_counters,
        )
    )
    out = exported(metrics)
    assert out["qingluan_sflow_sent_bytes_total"] == []
    assert out["qingluan_sflow_datagrams_total"] == []
    assert (
        value(out["qingluan_sflow_decode_errors_total"], "qingluan_sflow_decode_errors_total") == 0
    )
