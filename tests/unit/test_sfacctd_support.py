"""The pure parts of tests/support/sfacctd.py: the config it writes and how it reads
sfacctd's print output and log, against files a real sfacctd wrote
(tests/data/sfacctd, README.txt there says how)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.sfacctd import (
    AGGREGATE,
    PLUGIN,
    SfFlow,
    log_ready,
    parse_output,
    parse_record,
    purge_count,
    render_config,
    totals,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sfacctd"
OUTPUT = (DATA / "print-output.json").read_text()
LOG = (DATA / "sfacctd.log").read_text()

A_MAC, B_MAC = "62:d2:fa:8c:1f:4b", "8a:ac:c0:ca:ec:d7"
DATA_FLOW = SfFlow(A_MAC, B_MAC, "10.79.0.1", "10.79.0.2", "tcp", 60700, 5201, 15424, 23280000)
ACK_FLOW = SfFlow(B_MAC, A_MAC, "10.79.0.2", "10.79.0.1", "tcp", 5201, 60700, 3456, 241920)


def _keys(conf: str) -> dict[str, str]:
    """``key: value`` lines of a pmacct config (``!`` starts a comment)."""
    out = {}
    for line in conf.splitlines():
        if not line.strip() or line.lstrip().startswith("!"):
            continue
        key, sep, value = line.partition(":")
        assert sep, f"not a key: value line: {line!r}"
        assert key.strip() not in out, f"key given twice: {key}"
        out[key.strip()] = value.strip()
    return out


# ---- config ----


def test_config_listens_where_asked_and_renormalizes() -> None:
    conf = _keys(
        render_config(
            port=16343, ip="127.0.0.1", output_file=Path("/w/o.json"), log_file=Path("/w/l.log")
        )
    )
    assert conf["sfacctd_ip"] == "127.0.0.1"
    assert conf["sfacctd_port"] == "16343"
    assert conf["sfacctd_renormalize"] == "true"
    assert conf["daemonize"] == "false"
    assert conf["logfile"] == "/w/l.log"


def test_config_has_one_print_plugin_appending_json() -> None:
    conf = _keys(
        render_config(
            port=6343,
            ip="10.0.0.1",
            output_file=Path("/w/o.json"),
            log_file=Path("/w/l.log"),
            refresh_time=2,
        )
    )
    assert conf["plugins"] == f"print[{PLUGIN}]"
    assert conf[f"print_output[{PLUGIN}]"] == "json"
    assert conf[f"print_output_file[{PLUGIN}]"] == "/w/o.json"
    # without append every purge overwrites the file with its own interval only
    assert conf[f"print_output_file_append[{PLUGIN}]"] == "true"
    assert conf[f"print_refresh_time[{PLUGIN}]"] == "2"
    primitives = [p.strip() for p in conf[f"aggregate[{PLUGIN}]"].split(",")]
    assert primitives == list(AGGREGATE)
    assert {"src_host", "dst_host", "proto", "src_port", "dst_port"} <= set(primitives)
    # with sampling_rate in the key, renormalized records would all say 1: left out
    assert "sampling_rate" not in primitives
    # every plugin-bound key names the one plugin
    for key in conf:
        if "[" in key:
            assert key.endswith(f"[{PLUGIN}]"), key


def test_config_without_renormalization() -> None:
    conf = _keys(
        render_config(
            port=1, ip="127.0.0.1", output_file=Path("o"), log_file=Path("l"), renormalize=False
        )
    )
    assert conf["sfacctd_renormalize"] == "false"


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_config_refuses_a_bad_port(port: int) -> None:
    with pytest.raises(ValueError):
        render_config(port=port, ip="127.0.0.1", output_file=Path("o"), log_file=Path("l"))


def test_config_refuses_a_refresh_under_a_second() -> None:
    with pytest.raises(ValueError):
        render_config(
            port=6343, ip="127.0.0.1", output_file=Path("o"), log_file=Path("l"), refresh_time=0
        )


# ---- print output ----


def test_every_record_of_the_real_output_is_read_in_file_order() -> None:
    records = parse_output(OUTPUT)
    assert len(records) == len(OUTPUT.splitlines()) == 12
    assert records[0] == SfFlow(
        A_MAC, B_MAC, "10.79.0.1", "10.79.0.2", "tcp", 60700, 5201, 1728, 2623104
    )
    assert records[1] == SfFlow(
        B_MAC, A_MAC, "10.79.0.2", "10.79.0.1", "tcp", 5201, 60700, 704, 49280
    )
    assert {r.key() for r in records} == {DATA_FLOW.key(), ACK_FLOW.key()}


def test_records_are_renormalized_counts() -> None:
    # renormalized by the sampling rate (64): whole multiples of it, bytes per packet
    # those of the frames OVS reports (1514-byte segments and 66-byte ACKs, +4 each)
    for record in parse_output(OUTPUT):
        assert record.packets % 64 == 0 and record.bytes % 64 == 0
        per_packet = record.bytes / record.packets
        assert 70 <= per_packet <= 1518


def test_totals_sum_the_purges_per_key() -> None:
    flows = totals(parse_output(OUTPUT))
    assert flows == [DATA_FLOW, ACK_FLOW]


def test_totals_keep_different_keys_apart() -> None:
    one = SfFlow("a", "b", "1.1.1.1", "2.2.2.2", "udp", 1, 2, 64, 6400)
    other_port = SfFlow("a", "b", "1.1.1.1", "2.2.2.2", "udp", 1, 3, 64, 6400)
    assert totals([one, other_port, one]) == [
        SfFlow("a", "b", "1.1.1.1", "2.2.2.2", "udp", 1, 2, 128, 12800),
        other_port,
    ]
    assert totals([]) == []


def test_a_line_being_written_is_skipped() -> None:
    lines = OUTPUT.splitlines()
    partial = "\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2]
    assert parse_output(partial) == parse_output(OUTPUT)[:-1]


def test_other_lines_are_skipped() -> None:
    noise = "\n".join(
        [
            "",
            "   ",
            "[1, 2]",
            '"text"',
            json.dumps({"event_type": "purge_init", "writer_id": "qlout/1"}),
            json.dumps({"ip_src": "10.0.0.1", "ip_dst": "10.0.0.2", "packets": "many"}),
            json.dumps({"ip_src": "10.0.0.1", "ip_dst": "10.0.0.2", "packets": True, "bytes": 1}),
            "not json at all",
        ]
    )
    assert parse_output(noise) == []
    assert parse_output(noise + "\n" + OUTPUT + "\n" + noise) == parse_output(OUTPUT)


def test_a_record_without_ports_or_macs() -> None:
    # what pmacct writes for ICMP (ports 0) and what a config without MACs would give
    flow = parse_record(
        {
            "event_type": "purge",
            "ip_src": "10.77.0.1",
            "ip_dst": "10.77.0.2",
            "ip_proto": "ICMP",
            "packets": 128,
            "bytes": "13056",
        }
    )
    assert flow == SfFlow("", "", "10.77.0.1", "10.77.0.2", "icmp", 0, 0, 128, 13056)


def test_parse_record_refuses_what_is_not_a_flow() -> None:
    with pytest.raises(KeyError):
        parse_record({"ip_src": "10.0.0.1", "ip_dst": "10.0.0.2", "packets": 1})
    with pytest.raises(ValueError):
        parse_record({"ip_src": "10.0.0.1", "ip_dst": "10.0.0.2", "packets": 1, "bytes": 1.5})


# ---- log ----


def test_the_real_log_says_ready_for_its_own_address_only() -> None:
    assert log_ready(LOG, "127.0.0.1", 16343)
    assert not log_ready(LOG, "127.0.0.1", 1634)  # no prefix match
    assert not log_ready(LOG, "127.0.0.1", 16344)
    assert not log_ready(LOG, "10.0.0.1", 16343)


def test_not_ready_before_the_plugin_started() -> None:
    core_only = "\n".join(line for line in LOG.splitlines() if f"( {PLUGIN}/" not in line) + "\n"
    assert "waiting for sFlow data on 127.0.0.1:16343" in core_only
    assert not log_ready(core_only, "127.0.0.1", 16343)


def test_purges_are_counted_when_they_end() -> None:
    assert purge_count(LOG) == 9
    assert purge_count(LOG.split("Purging cache - START")[0]) == 0
    # a START without its END yet does not count
    cut = LOG.rsplit("*** Purging cache - END", 1)[0]
    assert purge_count(cut) == 8
