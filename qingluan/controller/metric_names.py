"""The Prometheus metrics the controller exports at ``/metrics``: names, kinds, labels.

One table, read by the exporter (``qingluan.controller.metrics``), by the docs and by
the checks of the Grafana dashboard, so that a renamed metric cannot silently leave a
panel empty.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricName:
    name: str
    kind: str  # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]
    help: str


_ENDPOINT = ("host", "network", "endpoint", "container")

METRICS: tuple[MetricName, ...] = (
    MetricName(
        "qingluan_endpoint_sent_bytes_total",
        "counter",
        _ENDPOINT,
        "bytes the endpoint sent into its bridge (OpenFlow port stats)",
    ),
    MetricName(
        "qingluan_endpoint_received_bytes_total",
        "counter",
        _ENDPOINT,
        "bytes the bridge delivered to the endpoint (OpenFlow port stats)",
    ),
    MetricName(
        "qingluan_endpoint_sent_packets_total",
        "counter",
        _ENDPOINT,
        "packets the endpoint sent into its bridge (OpenFlow port stats)",
    ),
    MetricName(
        "qingluan_endpoint_received_packets_total",
        "counter",
        _ENDPOINT,
        "packets the bridge delivered to the endpoint (OpenFlow port stats)",
    ),
    MetricName(
        "qingluan_sflow_sent_bytes_total",
        "counter",
        _ENDPOINT,
        "bytes the endpoint sent, estimated from sFlow samples (sampled bytes x rate)",
    ),
    MetricName(
        "qingluan_sflow_sent_packets_total",
        "counter",
        _ENDPOINT,
        "packets the endpoint sent, estimated from sFlow samples",
    ),
    MetricName(
        "qingluan_sflow_datagrams_total",
        "counter",
        ("host",),
        "sFlow datagrams received by the embedded collector, by sending host",
    ),
    MetricName(
        "qingluan_sflow_decode_errors_total",
        "counter",
        (),
        "sFlow datagrams the embedded collector could not decode",
    ),
    MetricName(
        "qingluan_bridge_connected",
        "gauge",
        ("host",),
        "1 while the host's bridge is connected to the controller",
    ),
    MetricName(
        "qingluan_bridge_flows",
        "gauge",
        ("host",),
        "flows the controller keeps on the host's bridge",
    ),
    MetricName(
        "qingluan_bridge_groups",
        "gauge",
        ("host",),
        "groups the controller keeps on the host's bridge",
    ),
    MetricName(
        "qingluan_reconcile_duration_seconds",
        "histogram",
        ("host", "trigger"),
        "time of one reconcile of a bridge, barrier included",
    ),
    MetricName(
        "qingluan_reconcile_failures_total",
        "counter",
        ("host",),
        "reconciles that failed",
    ),
    MetricName(
        "qingluan_rest_request_duration_seconds",
        "histogram",
        ("method", "route", "status"),
        "time to answer one REST request",
    ),
    MetricName(
        "qingluan_ids_alerts_total",
        "counter",
        ("host", "severity", "action"),
        "IDS alerts received, by the action the policy took (log or quarantine)",
    ),
    MetricName(
        "qingluan_quarantines_active",
        "gauge",
        (),
        "endpoints or flows in quarantine now",
    ),
    MetricName(
        "qingluan_quarantines_total",
        "counter",
        ("scope",),
        "quarantines applied (scope: endpoint or flow)",
    ),
    MetricName(
        "qingluan_quarantine_confirm_seconds",
        "histogram",
        (),
        "time from an IDS alert received to its drop flow confirmed by a barrier",
    ),
    MetricName(
        "qingluan_threshold_events_total",
        "counter",
        ("source", "threshold"),
        "traffic threshold events (embedded collector or sFlow-RT)",
    ),
    MetricName(
        "qingluan_auto_steering_rules",
        "gauge",
        (),
        "steering rules held by threshold reactions now",
    ),
)

METRIC_NAMES = frozenset(m.name for m in METRICS)
