"""``--sflow-rt-config``: the YAML file of flows, thresholds and reactions for sFlow-RT."""

from __future__ import annotations

from pathlib import Path

import pytest

from qingluan.controller.monitor.sflowrt import FlowSpec, ThresholdSpec
from qingluan.controller.sflowrt_setup import BUILT_IN, RT_PRIORITY_BASE, load_setup

GOOD = """\
flows:
  - {name: qingluan_udp, keys: [ipsource, ipdestination, udpdestinationport],
     value: bytes, filter: "ipprotocol=17"}
  - {name: icmp_frames, keys: [ipsource], value: frames}
thresholds:
  - {name: qingluan_udp_flood, metric: qingluan_udp, value: 12500000}
  - {name: pings, metric: icmp_frames, value: 1000, timeout: 5}
reactions:
  - {threshold: qingluan_udp_flood, action: drop, quiet_seconds: 30}
  - {threshold: pings, action: rate_limit, rate_kbps: 64, burst_kbits: 8}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sflow-rt.yaml"
    path.write_text(text)
    return path


def test_no_file_is_the_built_in_set() -> None:
    setup = load_setup(None)
    assert setup is BUILT_IN
    assert [f.name for f in setup.flow_specs()] == ["qingluan_udp", "qingluan_tcp"]
    assert {r.threshold: r.action for r in setup.reaction_list()} == {
        "qingluan_udp_flood": "drop",
        "qingluan_elephant": "rate_limit",
    }


def test_a_valid_file(tmp_path: Path) -> None:
    setup = load_setup(write(tmp_path, GOOD))
    assert setup.flow_specs() == [
        FlowSpec(
            "qingluan_udp",
            ("ipsource", "ipdestination", "udpdestinationport"),
            "bytes",
            "ipprotocol=17",
        ),
        FlowSpec("icmp_frames", ("ipsource",), "frames", None),
    ]
    assert setup.threshold_specs() == [
        ThresholdSpec("qingluan_udp_flood", "qingluan_udp", 12_500_000, True, None),
        ThresholdSpec("pings", "icmp_frames", 1000, True, 5),
    ]
    drop, limit = setup.reaction_list()
    assert (drop.threshold, drop.action, drop.quiet_seconds) == ("qingluan_udp_flood", "drop", 30)
    assert (limit.action, limit.rate_kbps, limit.burst_kbits) == ("rate_limit", 64, 8)
    # sFlow-RT's rules have their own band of priorities
    assert {r.priority_base for r in (drop, limit)} == {RT_PRIORITY_BASE}
    assert list(drop.priorities()) == list(range(3950, 4000))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (GOOD.replace("value: bytes", "value: bytes, colour: red"), r"flows\.0\.colour"),
        (GOOD + "extras: []\n", "extras"),
        (GOOD.replace("metric: icmp_frames", "metric: icmp"), "threshold pings: no flow 'icmp'"),
        (GOOD.replace("{threshold: pings", "{threshold: ping"), "reaction for unknown 'ping'"),
        (
            GOOD.replace("rate_kbps: 64, burst_kbits: 8", "burst_kbits: 8"),
            "rate_kbps: a rate_limit reaction needs the rate",
        ),
        (
            GOOD.replace("action: drop, quiet", "action: drop, rate_kbps: 64, quiet"),
            "rate_kbps: only a rate_limit reaction has a rate",
        ),
        (GOOD.replace("action: drop", "action: shape"), r"reactions\.0\.action"),
        (GOOD.replace("value: 12500000", "value: 0"), r"thresholds\.0\.value"),
        (GOOD.replace("name: pings", "name: 'two words'"), r"thresholds\.1\.name"),
        (
            GOOD.replace("{threshold: pings", "{threshold: qingluan_udp_flood"),
            "two reactions for 'qingluan_udp_flood'",
        ),
        ("flows: [\n", "sFlow-RT config"),  # not YAML
        ("", "sFlow-RT config"),  # empty: no mapping
        ("- just\n- a list\n", "sFlow-RT config"),
    ],
)
def test_a_bad_file_names_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=problem) as err:
        load_setup(path)
    assert str(path) in str(err.value)


def test_a_missing_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No such file"):
        load_setup(tmp_path / "absent.yaml")
