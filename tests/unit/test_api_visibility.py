"""The IDS, quarantine, monitoring and ``/metrics`` routes as a client sees them: the app
as the controller builds it, over a real SQLite store (the bridges are a recording
stand-in, as in test_api)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from qingluan.api_schema import NetworkUpdate
from qingluan.controller.api import create_app
from qingluan.controller.api_monitoring import monitoring_router
from qingluan.controller.ids import IdsService
from qingluan.controller.metrics import Metrics
from qingluan.controller.monitoring import Cluster, MonitoringService
from qingluan.controller.services import Services
from qingluan.controller.store import SqliteStore
from tests.unit.test_monitoring_service import EP_A, EP_B, H1, WEB, Clock, capture
from tests.unit.test_services import NET1, RecordingConverger, make_network, reg, run_container

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PORT = 16343


@dataclass
class App:
    client: TestClient
    conv: RecordingConverger
    services: Services
    monitoring: MonitoringService
    clock: Clock
    sender: str  # the address of a container on an inspected network
    cluster: list[Cluster]  # what the monitoring sees; empty: it cannot be read

    def get(self, path: str, **kw: Any) -> httpx.Response:
        reply: httpx.Response = self.client.get(path, **kw)
        return reply

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        kw.setdefault("headers", AUTH)
        reply: httpx.Response = self.client.request(method, path, json=body, **kw)
        return reply


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    store = SqliteStore.in_state_dir(tmp_path)
    conv = RecordingConverger()
    services = Services(store, conv)
    services.register_host("h1", reg(1))
    make_network(services, NET1, "192.168.1.0/24", "192.168.1.1")
    services.update_network(NET1, NetworkUpdate(ids=True))
    sender = run_container(services, "a" * 64, "02:00:00:00:00:0a")
    metrics = Metrics()
    clock = Clock(8.0)
    cluster = [Cluster.of([H1], [WEB], [EP_A, EP_B])]

    def current() -> Cluster:
        if not cluster:
            raise RuntimeError("the store is away")
        return cluster[0]

    monitoring = MonitoringService(
        store, current, services, collector_port=PORT, observer=metrics, clock=clock
    )
    ids = IdsService(store, conv, observer=metrics)
    fastapi_app = create_app(
        services, TOKEN, ids=ids, metrics=metrics, extra=[partial(monitoring_router, monitoring)]
    )
    conv.calls.clear()
    with TestClient(fastapi_app, raise_server_exceptions=False) as client:
        yield App(client, conv, services, monitoring, clock, sender, cluster)
    store.close()


def error(reply: httpx.Response, status: int, code: str) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error", "code"} and body["code"] == code
    return str(body["error"])


def alert_body(src: str, **kw: Any) -> dict[str, Any]:
    return {
        "host": "h1",
        "src_ip": src,
        "dest_ip": "192.168.1.99",
        "signature_id": 9000001,
        "severity": 1,
        "proto": "ICMP",
        "signature": "test marker",
        **kw,
    }


# ---- auth ------------------------------------------------------------------------------

MUTATING = [
    ("POST", "/v1/ids/alerts", alert_body("192.168.1.2")),
    ("POST", "/v1/ids/policies", {"action": "quarantine"}),
    ("DELETE", "/v1/ids/policies/ids-1", None),
    ("DELETE", "/v1/quarantines/q-aaaaaaaaaaaa", None),
    ("PUT", "/v1/monitoring/settings", {"sflow": {"sampling": 64}}),
    ("POST", "/v1/monitoring/thresholds", {"value": 1, "action": "drop"}),
    ("DELETE", "/v1/monitoring/thresholds/threshold-1", None),
]


def test_changes_need_the_token(app: App) -> None:
    for method, path, body in MUTATING:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            reply = app.call(method, path, body, headers=headers)
            assert reply.status_code == 401, (method, path, headers, reply.text)
            assert reply.json()["code"] == "unauthorized"
    assert app.get("/v1/ids/policies").json() == []
    assert app.get("/v1/ids/alerts").json() == []
    assert app.get("/v1/monitoring/settings").json()["sflow"]["sampling"] == 400
    assert app.get("/v1/monitoring/thresholds").json() == []
    assert app.conv.calls == []


READING = [
    "/v1/ids/alerts",
    "/v1/ids/policies",
    "/v1/quarantines",
    "/v1/monitoring/settings",
    "/v1/monitoring/flows",
    "/v1/monitoring/interfaces",
    "/v1/monitoring/status",
    "/v1/monitoring/thresholds",
    "/metrics",
]


def test_reading_needs_no_token(app: App) -> None:
    assert {path: app.get(path).status_code for path in READING} == dict.fromkeys(READING, 200)


# ---- validation ------------------------------------------------------------------------


INVALID = [
    ("POST", "/v1/ids/policies", {"action": "quarantine", "max_severity": 0}, "body.max_severity"),
    ("POST", "/v1/ids/policies", {"action": "block"}, "body.action"),
    ("POST", "/v1/ids/alerts", alert_body("fd00::1"), "body.src_ip"),
    ("PUT", "/v1/monitoring/settings", {"sflow": {"targets": ["nope"]}}, "body.sflow.targets.0"),
    ("PUT", "/v1/monitoring/settings", {"sflow": {"sampling": 0}}, "body.sflow.sampling"),
    ("POST", "/v1/monitoring/thresholds", {"value": 1, "action": "rate_limit"}, "body.rate_kbps"),
    (
        "POST",
        "/v1/monitoring/thresholds",
        {"value": 1, "action": "drop", "window": 61},
        "body.window",
    ),
    ("GET", "/v1/ids/alerts?limit=0", None, "query.limit"),
    ("GET", "/v1/monitoring/flows?by=frames", None, "query.by"),
    ("GET", "/v1/monitoring/flows?window=0", None, "query.window"),
]


def test_invalid_requests_name_the_field(app: App) -> None:
    for method, path, body, field in INVALID:
        message = error(app.call(method, path, body), 422, "invalid")
        assert message.startswith(field + ":"), (method, path, message)


def test_the_collector_port_and_a_long_window_are_bad_requests(app: App) -> None:
    message = error(
        app.call("PUT", "/v1/monitoring/settings", {"collector_port": 6343}), 400, "invalid"
    )
    assert message.startswith(f"collector_port: the embedded collector listens on {PORT}")
    message = error(app.get("/v1/monitoring/flows?window=120"), 400, "invalid")
    assert message.startswith("window: the collector keeps 60 seconds")


def test_sflow_rt_flows_without_sflow_rt_are_not_found(app: App) -> None:
    message = error(app.get("/v1/monitoring/sflow-rt/activeflows/qingluan_udp"), 404, "not_found")
    assert "start the controller with --sflow-rt URL" in message


# ---- IDS and quarantines ---------------------------------------------------------------


def test_an_alert_under_a_quarantine_policy_quarantines_and_delete_lifts(app: App) -> None:
    reply = app.call(
        "POST",
        "/v1/ids/policies",
        {"id": "q", "action": "quarantine", "max_severity": 2, "duration": 60},
    )
    assert reply.status_code == 201 and reply.json()["id"] == "q"
    assert [p["id"] for p in app.get("/v1/ids/policies").json()] == ["q"]

    reply = app.call("POST", "/v1/ids/alerts", alert_body(app.sender))
    assert reply.status_code == 200, reply.text
    outcome = reply.json()
    assert (outcome["action"], outcome["policy_id"]) == ("quarantine", "q")
    q = outcome["quarantine"]
    assert (q["address"], q["host"], q["scope"], q["mac"]) == (
        app.sender,
        "h1",
        "endpoint",
        "02:00:00:00:00:0a",
    )
    assert q["expires_at"] == pytest.approx(q["created_at"] + 60)
    assert outcome["confirm_seconds"] is not None
    assert [h for h, _ in app.conv.calls] == ["h1"]  # the drop went to the sender's bridge

    assert [x["id"] for x in app.get("/v1/quarantines").json()] == [q["id"]]
    assert app.get(f"/v1/quarantines/{q['id']}").json()["alerts"] == 1
    # a less severe alert is only logged
    logged = app.call("POST", "/v1/ids/alerts", alert_body(app.sender, severity=3)).json()
    assert logged["action"] == "log" and logged["quarantine"] is None
    recent = app.get("/v1/ids/alerts?limit=1").json()
    assert [a["action"] for a in recent] == ["log"]  # newest first

    assert app.call("DELETE", f"/v1/quarantines/{q['id']}").status_code == 204
    assert app.get("/v1/quarantines").json() == []
    assert [h for h, _ in app.conv.calls] == ["h1", "h1"]  # and the lift too
    error(app.get(f"/v1/quarantines/{q['id']}"), 404, "not_found")
    assert app.call("DELETE", f"/v1/quarantines/{q['id']}").status_code == 204  # unknown: fine
    assert app.call("DELETE", "/v1/ids/policies/q").status_code == 204
    assert app.get("/v1/ids/policies").json() == []


def test_an_alert_from_an_unknown_address_is_logged(app: App) -> None:
    app.call("POST", "/v1/ids/policies", {"action": "quarantine"})
    outcome = app.call("POST", "/v1/ids/alerts", alert_body("192.168.1.77")).json()
    assert outcome["action"] == "log" and "192.168.1.77" in outcome["reason"]
    assert app.get("/v1/quarantines").json() == [] and app.conv.calls == []


# ---- monitoring ------------------------------------------------------------------------


def test_settings_round_trip_with_the_controllers_collector_port(app: App) -> None:
    body = {
        "sflow": {"sampling": 64, "targets": ["10.0.0.1:6343"]},
        "ipfix": {"targets": ["[fd00::1]:4739"]},
    }
    reply = app.call("PUT", "/v1/monitoring/settings", body)
    assert reply.status_code == 200, reply.text
    got = reply.json()
    assert got["collector_port"] == PORT and got["sflow"]["sampling"] == 64
    assert got["sflow"]["targets"] == ["10.0.0.1:6343"] and got["netflow"]["targets"] == []
    assert app.get("/v1/monitoring/settings").json() == got
    # what `qingluan monitor settings` does: GET, change, PUT back (the port included)
    got["sflow"]["polling"] = 2
    assert app.call("PUT", "/v1/monitoring/settings", got).json()["sflow"]["polling"] == 2


def test_flows_interfaces_and_thresholds(app: App) -> None:
    for _, arrived, datagram in capture():
        app.monitoring.table.add(datagram, arrived)
        app.monitoring.on_datagram(datagram)
    flows = app.get("/v1/monitoring/flows?window=5").json()
    assert len(flows) == 4 and flows[0]["container_src"] == "client"
    top = app.get(
        "/v1/monitoring/flows",
        params={"by": "packets", "limit": 1, "host": "h1", "endpoint": "server", "window": 5},
    ).json()
    assert [(f["ipv4_src"], f["protocol"], f["dst_port"]) for f in top] == [
        ("10.77.0.1", "tcp", 5201)
    ]
    for query in ("network=nothing", "endpoint=nobody", "host=h2"):
        assert app.get(f"/v1/monitoring/flows?{query}").json() == [], query
    assert len(app.get("/v1/monitoring/flows?endpoint=client&host=h1&network=web").json()) == 4
    interfaces = app.get("/v1/monitoring/interfaces").json()
    assert [(i["port_name"], i["container"]) for i in interfaces] == [
        ("br0", None),
        ("qlhva", "client"),
        ("qlhvb", "server"),
    ]
    assert app.get("/v1/monitoring/status").json()["datagrams_by_host"] == {"h1": 54}

    reply = app.call(
        "POST", "/v1/monitoring/thresholds", {"id": "elephant", "value": 1e6, "action": "drop"}
    )
    assert reply.status_code == 201 and reply.json()["window"] == 5
    error(
        app.call(
            "POST", "/v1/monitoring/thresholds", {"id": "elephant", "value": 1, "action": "drop"}
        ),
        409,
        "conflict",
    )
    assert [t["id"] for t in app.get("/v1/monitoring/thresholds").json()] == ["elephant"]
    assert app.call("DELETE", "/v1/monitoring/thresholds/elephant").status_code == 204
    assert app.get("/v1/monitoring/thresholds").json() == []


# ---- /metrics --------------------------------------------------------------------------


def rest_samples(app: App) -> dict[tuple[str, str, str], float]:
    reply = app.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(reply.text):
        if family.name == "qingluan_rest_request_duration_seconds":
            for s in family.samples:
                if s.name.endswith("_count"):
                    out[(s.labels["method"], s.labels["route"], s.labels["status"])] = s.value
    return out


def test_metrics_time_requests_by_route_template(app: App) -> None:
    app.get("/v1/quarantines/q-aaaaaaaaaaaa")
    app.get("/v1/quarantines/q-bbbbbbbbbbbb")
    app.call("DELETE", "/v1/quarantines/q-aaaaaaaaaaaa", headers={})
    app.get("/v1/no/such/path")
    counts = rest_samples(app)
    assert counts[("GET", "/v1/quarantines/{quarantine_id}", "404")] == 2
    assert counts[("DELETE", "unmatched", "401")] == 1  # refused before any route
    assert counts[("GET", "unmatched", "404")] == 1
    assert not any("q-aaaa" in route for _, route, _ in counts)
    text = app.get("/metrics").text
    assert "qingluan_rest_request_duration_seconds" in text
    assert 'route="/metrics"' in text  # the previous scrape


def test_metrics_count_a_request_that_failed_with_500(app: App) -> None:
    app.cluster.clear()
    error(app.get("/v1/monitoring/flows"), 500, "internal")
    assert rest_samples(app)[("GET", "/v1/monitoring/flows", "500")] == 1


def test_metrics_count_alerts_reported_through_the_api(app: App) -> None:
    app.call("POST", "/v1/ids/alerts", alert_body(app.sender))
    families = {f.name: f for f in text_string_to_metric_families(app.get("/metrics").text)}
    (sample,) = [s for s in families["qingluan_ids_alerts"].samples if s.name.endswith("_total")]
    assert sample.labels == {"host": "h1", "severity": "1", "action": "log"}
    assert sample.value == 1
