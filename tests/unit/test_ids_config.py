"""The rendered suricata.yaml and the shipped example rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from qingluan.driver.ids.config import (
    DEFAULT_RULES,
    FALLBACK_CLASSIFICATION,
    debian_config_file,
    render_suricata_yaml,
)

SOCK = Path("/run/qingluan/eve.sock")
RUN = Path("/run/qingluan/ids")


def render(**changes: Any) -> str:
    options: dict[str, Any] = {
        "interface": "qlids1",
        "socket_path": SOCK,
        "log_dir": RUN,
        "rule_path": Path("/etc/qingluan/rules"),
        "rule_files": ["local.rules", DEFAULT_RULES],
        "classification_file": Path("/etc/suricata/classification.config"),
        "reference_file": Path("/etc/suricata/reference.config"),
        "threshold_file": RUN / "threshold.config",
    }
    options.update(changes)
    return render_suricata_yaml(**options)


def parsed(**changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load(render(**changes))
    assert isinstance(doc, dict)
    return doc


def eve_of(doc: dict[str, Any]) -> dict[str, Any]:
    outputs = {next(iter(o)): next(iter(o.values())) for o in doc["outputs"]}
    eve = outputs["eve-log"]
    assert isinstance(eve, dict)
    return eve


def test_yaml_header_suricata_7_needs():
    assert render().startswith("%YAML 1.1\n---\n")


def test_af_packet_on_one_interface_without_checksum_checks():
    doc = parsed()
    (iface,) = doc["af-packet"]
    assert iface["interface"] == "qlids1"
    assert iface["checksum-checks"] is False  # "no"
    assert iface["threads"] == 1
    assert iface["cluster-type"] == "cluster_flow"
    assert doc["capture"]["checksum-validation"] == "none"
    assert doc["stream"]["checksum-validation"] is False
    assert doc["runmode"] == "workers"


def test_cluster_type_none_leaves_fanout_type_out():
    (iface,) = parsed(cluster_type="none")["af-packet"]
    assert "cluster-type" not in iface
    (iface,) = parsed(cluster_type="none", threads=2)["af-packet"]
    assert iface["cluster-type"] == "cluster_flow"  # two sockets must share a fanout


def test_eve_log_to_the_unix_stream_socket_alerts_only():
    eve = eve_of(parsed())
    assert eve["enabled"] is True
    assert eve["filetype"] == "unix_stream"
    assert eve["filename"] == str(SOCK)
    types = [next(iter(t)) if isinstance(t, dict) else t for t in eve["types"]]
    assert types == ["alert"]
    alert = eve["types"][0]["alert"]
    assert alert["payload"] is False
    assert alert["packet"] is False


def test_no_pcap_logging_no_stats_no_unix_command():
    doc = parsed()
    outputs = {next(iter(o)): next(iter(o.values())) for o in doc["outputs"]}
    assert outputs["pcap-log"]["enabled"] is False
    assert outputs["stats"]["enabled"] is False
    assert outputs["fast"]["enabled"] is False
    assert doc["stats"]["enabled"] is False
    assert doc["unix-command"]["enabled"] is False
    assert "pcap" not in doc


def test_rule_files_paths_and_log_dir():
    doc = parsed()
    assert doc["default-rule-path"] == "/etc/qingluan/rules"
    assert doc["rule-files"] == ["local.rules", str(DEFAULT_RULES)]
    assert doc["default-log-dir"] == str(RUN)
    assert doc["classification-file"] == "/etc/suricata/classification.config"
    assert doc["reference-config-file"] == "/etc/suricata/reference.config"
    assert doc["threshold-file"] == str(RUN / "threshold.config")


def test_config_files_left_out_when_not_given():
    doc = parsed(classification_file=None, reference_file=None, threshold_file=None)
    assert "classification-file" not in doc
    assert "reference-config-file" not in doc
    assert "threshold-file" not in doc


def test_few_threads():
    doc = parsed()
    assert doc["threading"]["set-cpu-affinity"] is False
    assert doc["flow"]["managers"] == 1
    assert doc["flow"]["recyclers"] == 1


def test_rule_set_variables():
    groups = parsed(home_net="[10.20.0.0/16]")["vars"]
    assert groups["address-groups"]["HOME_NET"] == "[10.20.0.0/16]"
    assert groups["address-groups"]["EXTERNAL_NET"] == "!$HOME_NET"
    assert groups["port-groups"]["HTTP_PORTS"] == "80"
    extra = parsed(extra_vars={"EXTERNAL_NET": "any"})["vars"]["address-groups"]
    assert extra["EXTERNAL_NET"] == "any"


def test_awkward_paths_are_quoted():
    odd = Path('/tmp/we ird: "dir" #1/eve.sock')
    doc = parsed(socket_path=odd, rule_files=["a b.rules", "x#y.rules", "ü.rules"])
    assert eve_of(doc)["filename"] == str(odd)
    assert doc["rule-files"] == ["a b.rules", "x#y.rules", "ü.rules"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"interface": "has space"}, "interface"),
        ({"interface": "a" * 16}, "interface"),
        ({"interface": ""}, "interface"),
        ({"socket_path": Path("eve.sock")}, "absolute"),
        ({"socket_path": Path("/" + "x" * 120)}, "longer than"),
        ({"log_dir": Path("run")}, "absolute"),
        ({"rule_path": Path("rules")}, "absolute"),
        ({"rule_files": []}, "no rule files"),
        ({"threads": 0}, "threads"),
        ({"cluster_id": 70000}, "cluster-id"),
        ({"cluster_type": "cluster_cpu"}, "cluster-type"),
        ({"classification_file": Path("c.config")}, "absolute"),
    ],
)
def test_invalid_arguments(changes, message):
    with pytest.raises(ValueError, match=message):
        render(**changes)


def test_debian_config_file(tmp_path: Path):
    (tmp_path / "classification.config").write_text("")
    assert debian_config_file("classification.config", tmp_path) == (
        tmp_path / "classification.config"
    )
    assert debian_config_file("reference.config", tmp_path) is None


# -- the shipped example rules ------------------------------------------------------------


def rules() -> dict[int, str]:
    text = DEFAULT_RULES.read_text()
    found: dict[int, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            sid = re.search(r"\bsid:(\d+);", line)
            assert sid, line
            found[int(sid.group(1))] = line
    return found


def test_default_rules_ship_in_the_package():
    assert DEFAULT_RULES.name == "default.rules"
    assert DEFAULT_RULES.parent.name == "ids"
    assert DEFAULT_RULES.is_file()
    assert set(rules()) == {9000001, 9000002}


def test_icmp_marker_rule_has_severity_1():
    rule = rules()[9000001]
    assert rule.startswith("alert icmp ")
    assert "itype:8;" in rule
    assert 'content:"QINGLUAN-IDS-TEST";' in rule
    assert "priority:1;" in rule
    assert "QINGLUAN example" in rule


def test_http_uri_rule_has_severity_2():
    rule = rules()[9000002]
    assert rule.startswith("alert http ")
    assert 'http.uri; content:"/qingluan-ids-test";' in rule
    assert "priority:2;" in rule
    assert "QINGLUAN example" in rule


def test_fallback_classification_covers_the_default_rules():
    known = set(re.findall(r"classification: ([a-z-]+),", FALLBACK_CLASSIFICATION))
    used = {m for r in rules().values() for m in re.findall(r"classtype:([a-z-]+);", r)}
    assert used and used <= known
