"""The monitoring deployment (deploy/, the prometheus and grafana services of
docker-compose.yml), checked as data.

No image can be pulled on the build machines, so what would go wrong only at run
time is checked here: Prometheus scrapes the controller where it serves
``/metrics``, Grafana finds the datasource and the dashboard where compose mounts
them, and every PromQL expression of the dashboard names metrics the controller
exports (``qingluan.controller.metric_names``) with labels those metrics have, so
that no panel stays silently empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qingluan.cli import build_parser
from qingluan.controller.metric_names import METRIC_NAMES, METRICS, MetricName
from tests.unit.test_compose import mounts

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
DATASOURCES_YML = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS_YML = REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "qingluan.yml"
DASHBOARD_JSON = REPO / "deploy" / "grafana" / "dashboards" / "qingluan.json"

BY_NAME: dict[str, MetricName] = {m.name: m for m in METRICS}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# PromQL functions and aggregations the dashboard may call
FUNCTIONS = frozenset(
    {"sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile"}
)
GROUPING = ("by", "without", "on", "ignoring", "group_left", "group_right")
KEYWORDS = frozenset({*GROUPING, "and", "or", "unless", "bool", "offset"})


# ---- loading ----


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(_yaml(REPO / "docker-compose.yml")["services"])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_JSON.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def datasource_uid() -> str:
    (source,) = [d for d in _yaml(DATASOURCES_YML)["datasources"] if d["type"] == "prometheus"]
    uid = source["uid"]
    assert isinstance(uid, str) and uid
    return uid


def _all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in _all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def _variable_query(variable: dict[str, Any]) -> str:
    """The query of a query variable; its ``definition`` (what the editor shows) must
    say the same."""
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    assert isinstance(text, str)
    assert variable.get("definition", text) == text, variable["name"]
    return text


# ---- PromQL checks ----


def resolve(name: str) -> MetricName | None:
    """The exported metric a series name belongs to: the name itself (counters, gauges)
    or a histogram's ``_bucket``/``_sum``/``_count``; None if the controller exports no
    such series (a histogram's bare name included)."""
    metric = BY_NAME.get(name)
    if metric is not None:
        return None if metric.kind == "histogram" else metric
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = BY_NAME.get(name.removesuffix(suffix))
            if base is not None and base.kind == "histogram":
                return base
    return None


def _labels_of(name: str) -> set[str]:
    metric = resolve(name)
    assert metric is not None
    labels = set(metric.labels)
    if name.endswith("_bucket"):
        labels.add("le")
    return labels


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*')
_GROUPING = re.compile(rf"\b({'|'.join(GROUPING)})\s*\(([^()]*)\)")
_IDENT = re.compile(r"(?<![$\w.])([A-Za-z_][A-Za-z0-9_]*)(\s*\()?")
_LEGEND = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def expression_problems(expr: str, legend: str = "") -> list[str]:
    """What is wrong with one dashboard expression, '' for nothing:

    - every series name (``qingluan_...`` or any other bare identifier that is not a
      function or keyword) must be an exported metric, histograms only with a suffix;
    - every label of a ``{...}`` selector must be a label of that selector's metric;
    - every label of ``by (...)`` / ``on (...)`` etc. must be a label of every metric
      of the expression (``le`` of a histogram's ``_bucket``);
    - every ``{{label}}`` of the legend must survive the expression: a label of every
      metric in it and, when it aggregates, one it keeps (``le`` never: a quantile
      drops it).
    """
    problems: list[str] = []
    names: list[str] = []
    for m in re.finditer(r"qingluan_\w*", expr):
        if not re.fullmatch(r"qingluan_[a-z_]+", m.group()):
            problems.append(f"not a metric name: {m.group()}")
    # selectors, checked against their own metric
    for m in _SELECTOR.finditer(expr):
        name, body = m.group(1), m.group(2)
        if name is None or name in KEYWORDS or name in FUNCTIONS:
            problems.append(f"a selector without a metric name: {m.group()}")
            continue
        matchers = [x for x in body.split(",") if x.strip()] if body.strip() else []
        for matcher in matchers:
            mm = _MATCHER.fullmatch(matcher)
            if mm is None:
                problems.append(f"cannot read the matcher {matcher.strip()!r} of {name}")
            elif resolve(name) is not None and mm.group(1) not in _labels_of(name):
                problems.append(f"{name} has no label {mm.group(1)}")
    # what is left once strings, selector bodies, ranges and groupings are gone
    rest = _STRING.sub('""', expr)
    rest = re.sub(r"\{[^{}]*\}", "", rest)
    rest = re.sub(r"\[[^\[\]]*\]", "", rest)
    grouping: dict[str, set[str]] = {g: set() for g in GROUPING}
    for m in _GROUPING.finditer(rest):
        grouping[m.group(1)] |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    rest = _GROUPING.sub(" ", rest)
    for m in _IDENT.finditer(rest):
        ident, call = m.group(1), m.group(2)
        if call:
            if ident not in FUNCTIONS:
                problems.append(f"unknown function {ident}")
        elif ident not in KEYWORDS:
            names.append(ident)
    for name in names:
        if resolve(name) is None:
            problems.append(f"no such series: {name}")
    known = [n for n in names if resolve(n) is not None]
    if not names:
        problems.append("no metric in the expression")
    for label in set().union(*grouping.values()):
        for name in known:
            if label not in _labels_of(name):
                problems.append(f"{name} has no label {label} (grouping)")
    # the labels of the result
    if known:
        result = set.intersection(*(_labels_of(n) for n in known)) - {"le"}
        if grouping["by"]:
            result &= grouping["by"]
        result -= grouping["without"]
        for label in _LEGEND.findall(legend):
            if label not in result:
                problems.append(f"legend {{{{{label}}}}}: not a label of the result of {expr}")
    return problems


def _label_values_problems(query: str) -> list[str]:
    m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
    if m is None:
        return [f"not a label_values(metric, label) query: {query}"]
    selector, label = m.groups()
    problems = expression_problems(selector)
    name = re.match(r"[A-Za-z_:][\w:]*", selector)
    if name is None or resolve(name.group()) is None:
        problems.append(f"no such metric in {query}")
    elif label not in _labels_of(name.group()) - {"le"}:
        problems.append(f"{name.group()} has no label {label}")
    return problems


# ---- the checks check ----


@pytest.mark.parametrize(
    ("expr", "legend"),
    [
        ("rate(qingluan_endpoint_sent_bytes_totl[5m])", ""),  # a typo
        ("rate(qingluan_endpoint_sent_bytes_total2[5m])", ""),  # not [a-z_]
        ("qingluan_reconcile_duration_seconds", ""),  # a histogram without a suffix
        ("rate(qingluan_bridge_flows_count[5m])", ""),  # a suffix on a gauge
        ("rate(qingluan_ids_alerts_total_bucket[5m])", ""),  # ... on a counter
        ("up", ""),  # not one of ours
        ('qingluan_quarantines_active{host=~"$host"}', ""),  # a label it does not have
        ('qingluan_bridge_flows{hots="a"}', ""),  # a typo in a label
        ("qingluan_bridge_flows{host=a}", ""),  # a matcher without quotes
        ('{__name__="qingluan_bridge_flows"}', ""),  # no metric name to check labels on
        ("sum by (network) (qingluan_bridge_flows)", ""),  # a label it does not have
        ("sum by (le) (rate(qingluan_reconcile_failures_total[5m]))", ""),  # le on a counter
        ("sum by (network) (rate(qingluan_endpoint_sent_bytes_total[5m]))", "{{container}}"),
        ("rate(qingluan_endpoint_sent_bytes_total[5m])", "{{trigger}}"),  # not its label
        (
            "histogram_quantile(0.5, sum by (le) "
            "(rate(qingluan_quarantine_confirm_seconds_bucket[5m])))",
            "{{le}}",
        ),  # gone after the quantile
        ("rat(qingluan_bridge_flows[5m])", ""),  # an unknown function
    ],
)
def test_the_expression_check_finds_broken_expressions(expr: str, legend: str) -> None:
    assert expression_problems(expr, legend), expr


@pytest.mark.parametrize(
    ("expr", "legend"),
    [
        ("8 * rate(qingluan_endpoint_sent_bytes_total[5m])", "{{container}}"),
        (
            "histogram_quantile(0.99, sum by (le, route) "
            '(rate(qingluan_rest_request_duration_seconds_bucket{method="GET"}[5m])))',
            "{{route}}",
        ),
        ("sum by (host) (rate(qingluan_reconcile_duration_seconds_count[5m]))", "{{host}}"),
        ("qingluan_quarantines_active", "active"),
    ],
)
def test_the_expression_check_passes_good_expressions(expr: str, legend: str) -> None:
    assert expression_problems(expr, legend) == []


def test_the_label_values_check_finds_broken_queries() -> None:
    assert _label_values_problems("label_values(qingluan_bridge_connected, host)") == []
    assert _label_values_problems("label_values(qingluan_bridge_connected, network)")
    assert _label_values_problems("label_values(qingluan_bridge_conected, host)")
    assert _label_values_problems("label_values(qingluan_reconcile_duration_seconds, host)")
    assert _label_values_problems('label_values(qingluan_bridge_flows{net="x"}, host)')
    assert _label_values_problems("host")


# ---- Prometheus ----


def test_prometheus_scrapes_the_controller_service_on_its_api_port(
    services: dict[str, Any],
) -> None:
    config = _yaml(PROMETHEUS_YML)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "qingluan-controller"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
    assert job.get("scrape_interval", config.get("global", {}).get("scrape_interval")) == "15s"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == ["controller:6680"]
    host, port = targets[0].rsplit(":", 1)
    # the compose service of that name runs the controller, listening on all addresses
    # of its container on that port (the published port is loopback only, the compose
    # network reaches the container itself)
    assert host in services
    args = build_parser().parse_args(services[host]["command"])
    assert args.command == "controller"
    assert args.api_port == int(port) == 6680
    assert args.api_host == "0.0.0.0"


def test_prometheus_reads_the_file_from_the_repository(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    volumes = mounts(prometheus)
    source, mode = volumes["/etc/prometheus/prometheus.yml"]
    assert (REPO / source).resolve() == PROMETHEUS_YML
    assert mode == "ro"


# ---- Grafana provisioning ----


def test_the_datasource_is_the_compose_prometheus(services: dict[str, Any]) -> None:
    (source,) = [d for d in _yaml(DATASOURCES_YML)["datasources"] if d["type"] == "prometheus"]
    assert source["uid"] == "qingluan-prom"
    assert source["url"] == "http://prometheus:9090"
    assert source.get("access", "proxy") == "proxy"
    assert "prometheus" in services
    # the port Prometheus listens on in its container
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])


def test_dashboards_are_read_where_compose_mounts_them(services: dict[str, Any]) -> None:
    (provider,) = _yaml(PROVIDERS_YML)["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path == "/var/lib/grafana/dashboards"
    volumes = mounts(services["grafana"])
    source, mode = volumes[path]
    assert (REPO / source).resolve() == DASHBOARD_JSON.parent
    assert mode == "ro"


def test_grafana_reads_the_provisioning_from_the_repository(services: dict[str, Any]) -> None:
    volumes = mounts(services["grafana"])
    source, mode = volumes["/etc/grafana/provisioning"]
    assert mode == "ro"
    root = (REPO / source).resolve()
    assert (root / "datasources" / DATASOURCES_YML.name).resolve() == DATASOURCES_YML
    assert (root / "dashboards" / PROVIDERS_YML.name).resolve() == PROVIDERS_YML


# ---- compose ----


def test_every_bind_mount_of_the_monitoring_services_exists(services: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        for target, (source, mode) in mounts(services[name]).items():
            assert source.startswith("./"), f"{name}: {source} is not in the repository"
            assert (REPO / source).exists(), f"{name}: {source} (for {target}) does not exist"
            assert mode == "ro", f"{name}: {target} should be read-only"


def test_monitoring_images_are_pinned_and_published_on_loopback(services: dict[str, Any]) -> None:
    expected = {
        "prometheus": ("prom/prometheus", "127.0.0.1:9090:9090"),
        "grafana": ("grafana/grafana", "127.0.0.1:3000:3000"),
    }
    for name, (image, port) in expected.items():
        repo, sep, tag = services[name]["image"].partition(":")
        assert repo == image
        assert sep and tag and tag != "latest", f"{name}: pin the image tag"
        assert services[name]["ports"] == [port]
    deps = services["grafana"]["depends_on"]
    assert "prometheus" in (deps if isinstance(deps, list) else list(deps))


def test_controller_publishes_its_sflow_collector(services: dict[str, Any]) -> None:
    controller = services["controller"]
    assert "6343:6343/udp" in controller["ports"]
    args = build_parser().parse_args(controller["command"])
    assert args.sflow_port == 6343
    # it listens where the hosts' bridges can reach it: all addresses of its container
    assert (args.sflow_host or args.openflow_host) == "0.0.0.0"


# ---- the dashboard ----


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "qingluan"
    assert dashboard["schemaVersion"] == 39
    assert dashboard["title"]


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in _all_panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_panels_fit_the_grid(dashboard: dict[str, Any]) -> None:
    for panel in _all_panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0 and grid["y"] >= 0, panel["title"]


def test_every_panel_and_variable_uses_the_provisioned_datasource(
    dashboard: dict[str, Any], datasource_uid: str
) -> None:
    for panel in _all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource_uid}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            ds = target.get("datasource", panel["datasource"])
            assert ds["uid"] == datasource_uid, panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == datasource_uid, variable["name"]


def test_every_expression_uses_exported_metrics_and_their_labels(
    dashboard: dict[str, Any],
) -> None:
    problems = []
    for panel, target in _targets(dashboard):
        for problem in expression_problems(target["expr"], target.get("legendFormat", "")):
            problems.append(f"{panel['title']} / {target['refId']}: {problem}")
    assert problems == []
    # the check saw every expression: every metric used is one of METRIC_NAMES
    used = {
        resolve(name)
        for _, target in _targets(dashboard)
        for name in re.findall(r"qingluan_[a-z_]+", target["expr"])
    }
    assert used and all(m is not None and m.name in METRIC_NAMES for m in used)


def test_variables_host_and_network_come_from_label_values(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"host", "network"} <= set(variables)
    for name in ("host", "network"):
        query = _variable_query(variables[name])
        assert _label_values_problems(query) == [], query
        assert re.search(rf",\s*{name}\s*\)\s*$", query), query
    # every $variable the queries use is defined
    for _, target in _targets(dashboard):
        for ref in re.findall(r"\$(\w+)", target["expr"]):
            assert ref.startswith("__") or ref in variables, f"undefined ${ref}"


def _find(dashboard: dict[str, Any], metric: str, *needles: str) -> list[dict[str, Any]]:
    """Targets whose expression uses ``metric`` and contains every needle (spaces ignored)."""
    out = []
    for _, target in _targets(dashboard):
        expr = target["expr"].replace(" ", "")
        if re.search(rf"{metric}(?![a-z_])", expr) and all(
            n.replace(" ", "") in expr for n in needles
        ):
            out.append(target)
    return out


@pytest.mark.parametrize("direction", ["sent", "received"])
def test_per_endpoint_bit_rates_from_port_stats(dashboard: dict[str, Any], direction: str) -> None:
    targets = _find(dashboard, f"qingluan_endpoint_{direction}_bytes_total", "rate(", "8*")
    assert any("{{container}}" in t["legendFormat"] for t in targets), direction


def test_sflow_estimate_next_to_port_stats(dashboard: dict[str, Any]) -> None:
    for panel in _all_panels(dashboard):
        exprs = [t["expr"] for t in panel.get("targets", [])]
        sflow = [e for e in exprs if "qingluan_sflow_sent_bytes_total" in e and "sum" not in e]
        port = [e for e in exprs if "qingluan_endpoint_sent_bytes_total" in e and "sum" not in e]
        if sflow and port:
            # the same endpoints: the same selector on both
            assert sflow[0].split("{", 1)[1] == port[0].split("{", 1)[1]
            return
    pytest.fail("no panel with the sFlow estimate and the port statistics of the endpoints")


def test_traffic_per_network(dashboard: dict[str, Any]) -> None:
    targets = _find(dashboard, "qingluan_endpoint_sent_bytes_total", "sum by (network)")
    assert any("{{network}}" in t["legendFormat"] for t in targets)


@pytest.mark.parametrize(
    "metric", ["qingluan_bridge_flows", "qingluan_bridge_groups", "qingluan_bridge_connected"]
)
def test_bridge_gauges_per_host(dashboard: dict[str, Any], metric: str) -> None:
    assert any("{{host}}" in t["legendFormat"] for t in _find(dashboard, metric))


@pytest.mark.parametrize(
    ("histogram", "quantiles", "by"),
    [
        ("qingluan_reconcile_duration_seconds", ("0.5", "0.99"), "host"),
        ("qingluan_rest_request_duration_seconds", ("0.99",), "route"),
        ("qingluan_quarantine_confirm_seconds", ("0.5", "0.99"), ""),
    ],
)
def test_latency_quantiles(
    dashboard: dict[str, Any], histogram: str, quantiles: tuple[str, ...], by: str
) -> None:
    for q in quantiles:
        grouping = f"sum by (le, {by})" if by else "sum by (le)"
        targets = _find(dashboard, f"{histogram}_bucket", f"histogram_quantile({q},", grouping)
        assert targets, f"{histogram} p{q}"


def test_quarantine_confirm_latency_has_the_50_ms_line(dashboard: dict[str, Any]) -> None:
    for panel in _all_panels(dashboard):
        exprs = " ".join(t["expr"] for t in panel.get("targets", []))
        if "qingluan_quarantine_confirm_seconds_bucket" not in exprs:
            continue
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] == "s"
        assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "line+area", "dashed")
        assert 0.05 in [step["value"] for step in defaults["thresholds"]["steps"]]
        return
    pytest.fail("no quarantine confirm latency panel")


def test_ids_quarantine_and_steering_panels(dashboard: dict[str, Any]) -> None:
    ids = _find(dashboard, "qingluan_ids_alerts_total", "rate(", "by (severity, action)")
    assert (
        ids and "{{severity}}" in ids[0]["legendFormat"] and "{{action}}" in ids[0]["legendFormat"]
    )
    assert _find(dashboard, "qingluan_quarantines_active")
    events = _find(dashboard, "qingluan_threshold_events_total")
    assert events and "{{threshold}}" in events[0]["legendFormat"]
    assert _find(dashboard, "qingluan_auto_steering_rules")
