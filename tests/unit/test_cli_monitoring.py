"""``qingluan ids|quarantine|monitor ...``: what the parser makes of a command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from qingluan import cli, cli_monitoring
from qingluan.controller.config import DEFAULT_STATE_DIR


def parse(line: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(line.split())


def test_ids_on_and_off_name_a_network() -> None:
    on = parse("ids on web")
    assert (on.func, on.ids_command, on.network) == (cli_monitoring.cmd_ids_toggle, "on", "web")
    off = parse("ids off 0123456789ab --controller http://10.0.0.5:6680")
    assert (off.func, off.ids_command, off.network) == (
        cli_monitoring.cmd_ids_toggle,
        "off",
        "0123456789ab",
    )
    assert off.controller == "http://10.0.0.5:6680"
    assert on.token_file == DEFAULT_STATE_DIR / "token" and on.controller is None


def test_ids_policy_add() -> None:
    args = parse(
        "ids policy add --action quarantine --max-severity 2 --signature 9000001 "
        "--scope flow --duration 0 --priority 50 --id web-attacks "
        "--token-file /tmp/t"
    )
    assert args.func is cli_monitoring.cmd_policy_add
    assert (args.action, args.max_severity, args.signature_id) == ("quarantine", 2, 9000001)
    assert (args.scope, args.duration, args.priority, args.id) == ("flow", 0, 50, "web-attacks")
    assert args.token_file == Path("/tmp/t") and args.description == ""


def test_ids_policy_add_defaults() -> None:
    args = parse("ids policy add --action log")
    assert (args.priority, args.scope, args.duration) == (100, "endpoint", 300)
    assert (args.id, args.signature_id, args.max_severity) == (None, None, None)


def test_ids_policy_ls_rm_and_alerts() -> None:
    assert parse("ids policy ls").func is cli_monitoring.cmd_policy_ls
    rm = parse("ids policy rm ids-3")
    assert (rm.func, rm.id) == (cli_monitoring.cmd_policy_rm, "ids-3")
    alerts = parse("ids alerts --limit 5 --json")
    assert (alerts.func, alerts.limit, alerts.json) == (cli_monitoring.cmd_alerts, 5, True)
    assert parse("ids alerts").limit == 20


def test_quarantine_ls_and_rm() -> None:
    rm = parse("quarantine rm q-0123456789ab")
    assert (rm.func, rm.id) == (cli_monitoring.cmd_quarantine_rm, "q-0123456789ab")
    ls = parse("quarantine ls --json")
    assert (ls.func, ls.json) == (cli_monitoring.cmd_quarantine_ls, True)


def test_monitor_settings() -> None:
    args = parse(
        "monitor settings --sampling 64 --sflow-target 10.0.0.1:6343 "
        "--sflow-target [fd00::1]:6343 --ipfix-target 10.0.0.2:4739 --sflow on"
    )
    assert args.func is cli_monitoring.cmd_settings
    assert args.sampling == 64 and args.sflow == "on"
    assert args.sflow_target == ["10.0.0.1:6343", "[fd00::1]:6343"]
    assert args.ipfix_target == ["10.0.0.2:4739"]
    # what is not given stays None: the command then leaves it as it is
    assert (args.polling, args.header, args.netflow_target) == (None, None, None)


def test_monitor_settings_alone_only_shows() -> None:
    args = parse("monitor settings")
    given = [
        k
        for k in (
            "sampling",
            "polling",
            "header",
            "sflow",
            "sflow_target",
            "netflow_target",
            "ipfix_target",
        )
        if getattr(args, k) is not None
    ]
    assert args.func is cli_monitoring.cmd_settings and given == []


def test_monitor_threshold_add() -> None:
    args = parse("monitor threshold add --value 1 --action drop")
    assert args.func is cli_monitoring.cmd_threshold_add
    assert (args.value, args.action, args.metric, args.protocol) == (1.0, "drop", "bytes", "any")
    assert (args.quiet, args.id, args.rate_kbps) == (30.0, None, None)
    limit = parse(
        "monitor threshold add --value 1e6 --action rate_limit --rate-kbps 800 "
        "--metric packets --protocol udp --quiet 5 --id flood"
    )
    assert (limit.value, limit.rate_kbps, limit.metric, limit.protocol, limit.quiet, limit.id) == (
        1e6,
        800,
        "packets",
        "udp",
        5.0,
        "flood",
    )


def test_monitor_threshold_ls_rm_flows_and_interfaces() -> None:
    assert parse("monitor threshold ls").func is cli_monitoring.cmd_threshold_ls
    rm = parse("monitor threshold rm threshold-2")
    assert (rm.func, rm.id) == (cli_monitoring.cmd_threshold_rm, "threshold-2")
    flows = parse("monitor flows --by packets --limit 3 --network web --endpoint client --host h1")
    assert flows.func is cli_monitoring.cmd_flows and flows.func is not cli.cmd_flows
    assert (flows.by, flows.limit, flows.network, flows.endpoint, flows.host) == (
        "packets",
        3,
        "web",
        "client",
        "h1",
    )
    assert parse("monitor interfaces --json").func is cli_monitoring.cmd_interfaces
    assert parse("flows h1").func is cli.cmd_flows  # the bridge's OpenFlow flows: not these


@pytest.mark.parametrize(
    "line",
    [
        "monitor threshold add --action drop",  # no --value
        "monitor threshold add --value 1 --action shape",
        "monitor threshold add --value x --action drop",
        "monitor settings --sampling many",
        "monitor settings --sflow maybe",
        "ids policy add --action block",
        "ids policy add",  # no --action
        "ids on",  # no network
        "quarantine rm",  # no id
        "ids",
        "monitor",
    ],
)
def test_bad_command_lines_are_refused(line: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(line)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


# ---- what two commands send (the controller's REST calls recorded) ---------------------


class Recorder:
    def __init__(self, replies: list[object]) -> None:
        self.calls: list[tuple[str, str, object, dict[str, str] | None]] = []
        self.replies = replies

    def __call__(
        self,
        method: str,
        url: str,
        *,
        body: object = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> object:
        self.calls.append((method, url, body, headers))
        return self.replies.pop(0)


def test_monitor_settings_changes_only_what_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("tok\n")
    current = {
        "sflow": {"enabled": True, "targets": [], "sampling": 400, "polling": 10, "header": 128},
        "netflow": {"targets": [], "active_timeout": 60},
        "ipfix": {"targets": [], "sampling": 400},
        "collector_port": 6343,
    }
    recorder = Recorder([current, {"stored": True}])
    monkeypatch.setattr(cli, "_call", recorder)
    line = (
        f"monitor settings --sampling 64 --sflow-target 10.0.0.1:6343 --controller "
        f"http://ctl:6680 --token-file {token}"
    )
    assert cli.main(line.split()) == 0
    (get, put) = recorder.calls
    assert get[:2] == ("GET", "http://ctl:6680/v1/monitoring/settings")
    assert put[:2] == ("PUT", "http://ctl:6680/v1/monitoring/settings")
    assert put[3] == {"Authorization": "Bearer tok"}
    sent = put[2]
    assert isinstance(sent, dict)
    assert sent["sflow"] == {
        "enabled": True,
        "targets": ["10.0.0.1:6343"],
        "sampling": 64,
        "polling": 10,
        "header": 128,
    }
    assert sent["netflow"] == current["netflow"] and sent["collector_port"] == 6343
    assert '"stored": true' in capsys.readouterr().out


def test_monitor_threshold_add_sends_the_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("tok")
    recorder = Recorder([{"id": "threshold-1"}])
    monkeypatch.setattr(cli, "_call", recorder)
    line = f"monitor threshold add --value 1 --action drop --token-file {token}"
    assert cli.main(line.split()) == 0
    ((method, url, body, _),) = recorder.calls
    assert (method, url.rsplit("/v1", 1)[1]) == ("POST", "/monitoring/thresholds")
    assert body == {
        "metric": "bytes",
        "value": 1.0,
        "action": "drop",
        "quiet_seconds": 30.0,
        "protocol": "any",
    }
    assert "threshold threshold-1 added" in capsys.readouterr().out
