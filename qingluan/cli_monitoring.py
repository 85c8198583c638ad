"""``qingluan ids ...``, ``qingluan quarantine ...`` and ``qingluan monitor ...``: the REST API
of intrusion detection and traffic monitoring for a person at a terminal."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qingluan.controller.config import DEFAULT_STATE_DIR
from qingluan.status_view import table

AddControllerArg = Callable[[argparse.ArgumentParser], None]


def _get(args: argparse.Namespace, path: str, params: dict[str, str] | None = None) -> Any:
    from qingluan import cli

    return cli._call("GET", cli._controller_url(args) + "/v1" + path, params=params)


def _add_given(body: dict[str, object], args: argparse.Namespace, keys: Sequence[str]) -> None:
    from qingluan import cli

    cli._add_given(body, args, keys)


def _send(args: argparse.Namespace, method: str, path: str, body: object = None) -> Any:
    from qingluan import cli

    return cli._send(args, method, path, body=body)


# ---- ids -------------------------------------------------------------------------------


def cmd_ids_toggle(args: argparse.Namespace) -> int:
    networks = _get(args, "/networks")
    ref = args.network
    chosen = [
        n
        for n in networks
        if ref in (n.get("name"), n["id"]) or (len(ref) >= 12 and n["id"].startswith(ref))
    ]
    if not chosen:
        raise SystemExit(f"qingluan: no qingluan network is named {ref!r}")
    on = args.ids_command == "on"
    for network in chosen:
        _send(args, "PATCH", f"/networks/{network['id']}", body={"ids": on})
        print(f"network {ref} on host {network['host']}: inspection {'on' if on else 'off'}")
    return 0


def cmd_policy_add(args: argparse.Namespace) -> int:
    body: dict[str, object] = {
        "action": args.action,
        "priority": args.priority,
        "scope": args.scope,
        "duration": args.duration,
        "description": args.description,
    }
    _add_given(body, args, ("id", "signature_id", "max_severity"))
    policy = _send(args, "POST", "/ids/policies", body=body)
    print(f"IDS policy {policy['id']} added")
    return 0


def cmd_policy_ls(args: argparse.Namespace) -> int:
    rows = [
        [
            str(p["priority"]),
            p["id"],
            str(p.get("signature_id") or "*"),
            f"<={p['max_severity']}" if p.get("max_severity") else "*",
            p["action"],
            p["scope"],
            f"{p['duration']}s" if p["duration"] else "until lifted",
        ]
        for p in _get(args, "/ids/policies")
    ]
    print(table(["PRIO", "ID", "SIGNATURE", "SEVERITY", "ACTION", "SCOPE", "FOR"], rows))
    return 0


def cmd_policy_rm(args: argparse.Namespace) -> int:
    from qingluan import cli

    return cli.remove_one(args, "/ids/policies", "IDS policy")


def cmd_alerts(args: argparse.Namespace) -> int:
    data = _get(args, "/ids/alerts", {"limit": str(args.limit)})
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = []
    for outcome in data:
        a = outcome["alert"]
        confirm = outcome.get("confirm_seconds")
        rows.append(
            [
                time.strftime("%H:%M:%S", time.localtime(outcome["received_at"])),
                a["host"],
                f"{a['gid']}:{a['signature_id']}",
                str(a["severity"]),
                f"{a['src_ip']} -> {a['dest_ip']}",
                outcome["action"] + (f" ({confirm * 1000:.1f} ms)" if confirm else ""),
                a["signature"][:40],
            ]
        )
    print(table(["TIME", "HOST", "SID", "SEV", "FLOW", "ACTION", "SIGNATURE"], rows))
    return 0


# ---- quarantines -----------------------------------------------------------------------


def cmd_quarantine_ls(args: argparse.Namespace) -> int:
    data = _get(args, "/quarantines")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    now = time.time()
    rows = []
    for q in data:
        left = q.get("expires_at")
        flow = ""
        if q["scope"] == "flow":
            flow = f" {q['protocol']} -> {q.get('ipv4_dst') or '*'}:{q.get('dst_port') or '*'}"
        rows.append(
            [
                q["id"],
                q["host"],
                q["address"] + flow,
                q["scope"],
                f"{max(0, left - now):.0f}s" if left else "until lifted",
                str(q["alerts"]),
                q["reason"][:40],
            ]
        )
    print(table(["ID", "HOST", "ENDPOINT", "SCOPE", "LEFT", "ALERTS", "REASON"], rows))
    return 0


def cmd_quarantine_rm(args: argparse.Namespace) -> int:
    from qingluan import cli

    return cli.remove_one(args, "/quarantines", "quarantine", "lifted")


# ---- monitoring ------------------------------------------------------------------------


def cmd_settings(args: argparse.Namespace) -> int:
    settings = _get(args, "/monitoring/settings")
    changed = False
    for section, key, value in (
        ("sflow", "sampling", args.sampling),
        ("sflow", "polling", args.polling),
        ("sflow", "header", args.header),
        ("sflow", "targets", args.sflow_target),
        ("netflow", "targets", args.netflow_target),
        ("ipfix", "targets", args.ipfix_target),
    ):
        if value is not None:
            settings[section][key] = value
            changed = True
    if args.sflow is not None:
        settings["sflow"]["enabled"] = args.sflow == "on"
        changed = True
    if changed:
        settings = _send(args, "PUT", "/monitoring/settings", body=settings)
    print(json.dumps(settings, indent=2))
    return 0


def cmd_flows(args: argparse.Namespace) -> int:
    params = {"by": args.by, "limit": str(args.limit)}
    for key in ("network", "endpoint", "host"):
        value = getattr(args, key)
        if value:
            params[key] = value
    data = _get(args, "/monitoring/flows", params)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = [
        [
            f.get("host") or "?",
            f.get("network") or "",
            f"{f.get('container_src') or f.get('ipv4_src') or f['eth_src']}",
            f"{f.get('container_dst') or f.get('ipv4_dst') or f['eth_dst']}",
            f"{f.get('protocol') or ''}:{f.get('dst_port') or ''}".strip(":"),
            f"{f['bytes_per_second'] * 8 / 1e6:.2f}",
            f"{f['packets_per_second']:.0f}",
            str(f["bytes"]),
        ]
        for f in data
    ]
    header = ["HOST", "NETWORK", "FROM", "TO", "PROTO", "MBIT/S", "PKT/S", "BYTES"]
    print(table(header, rows))
    return 0


def cmd_interfaces(args: argparse.Namespace) -> int:
    data = _get(args, "/monitoring/interfaces")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = [
        [
            i.get("host") or i["agent"],
            i.get("port_name") or str(i["if_index"]),
            i.get("container") or "",
            f"{i['in_bps'] / 1e6:.2f}",
            f"{i['out_bps'] / 1e6:.2f}",
        ]
        for i in data
    ]
    print(table(["HOST", "PORT", "CONTAINER", "IN MBIT/S", "OUT MBIT/S"], rows))
    return 0


def cmd_rt_flows(args: argparse.Namespace) -> int:
    data = _get(args, f"/monitoring/sflow-rt/activeflows/{args.name}",
                {"max_flows": str(args.limit), "agent": args.agent})  # fmt: skip
    rows = [[f["key"], f"{f['value']:.1f}", f.get("agent") or ""] for f in data]
    print(table(["KEY", "VALUE", "AGENT"], rows))
    return 0


def cmd_threshold_add(args: argparse.Namespace) -> int:
    body: dict[str, object] = {
        "metric": args.metric,
        "value": args.value,
        "action": args.action,
        "quiet_seconds": args.quiet,
        "protocol": args.protocol,
    }
    _add_given(body, args, ("id", "rate_kbps"))
    threshold = _send(args, "POST", "/monitoring/thresholds", body=body)
    print(f"threshold {threshold['id']} added")
    return 0


def cmd_threshold_ls(args: argparse.Namespace) -> int:
    print(json.dumps(_get(args, "/monitoring/thresholds"), indent=2))
    return 0


def cmd_threshold_rm(args: argparse.Namespace) -> int:
    from qingluan import cli

    return cli.remove_one(args, "/monitoring/thresholds", "threshold")


# ---- the parsers -----------------------------------------------------------------------


def add_monitoring_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], controller_arg: AddControllerArg
) -> None:
    def leaf(parent: Any, name: str, help_text: str, func: Callable[..., int]) -> Any:
        p = parent.add_parser(name, help=help_text)
        controller_arg(p)
        p.add_argument("--token-file", type=Path, default=DEFAULT_STATE_DIR / "token")
        p.set_defaults(func=func)
        return p

    ids = sub.add_parser("ids", help="intrusion detection: inspection, policies, alerts")
    isub = ids.add_subparsers(dest="ids_command", required=True)
    for word in ("on", "off"):
        p = leaf(isub, word, f"turn inspection of a network {word}", cmd_ids_toggle)
        p.add_argument("network", help="network name or id (every host's network of that name)")
    pol = isub.add_parser("policy", help="what to do with alerts")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    p = leaf(psub, "add", "add a policy", cmd_policy_add)
    p.add_argument("--id")
    p.add_argument("--priority", type=int, default=100)
    p.add_argument("--signature", dest="signature_id", type=int, metavar="SID")
    p.add_argument("--max-severity", type=int, metavar="N", help="severity N or worse (1 worst)")
    p.add_argument("--action", choices=("log", "quarantine"), required=True)
    p.add_argument("--scope", choices=("endpoint", "flow"), default="endpoint")
    p.add_argument("--duration", type=int, default=300, metavar="SECONDS", help="0: until lifted")
    p.add_argument("--description", default="")
    leaf(psub, "ls", "list the policies", cmd_policy_ls)
    p = leaf(psub, "rm", "remove a policy", cmd_policy_rm)
    p.add_argument("id")
    p = leaf(isub, "alerts", "the latest alerts and what was done", cmd_alerts)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")

    qua = sub.add_parser("quarantine", help="endpoints and flows in quarantine")
    qsub = qua.add_subparsers(dest="quarantine_command", required=True)
    p = leaf(qsub, "ls", "list the quarantines", cmd_quarantine_ls)
    p.add_argument("--json", action="store_true")
    p = leaf(qsub, "rm", "lift a quarantine now", cmd_quarantine_rm)
    p.add_argument("id")

    mon = sub.add_parser("monitor", help="traffic monitoring: export settings, flows, thresholds")
    msub = mon.add_subparsers(dest="monitor_command", required=True)
    p = leaf(msub, "settings", "show or change what the bridges export", cmd_settings)
    p.add_argument("--sampling", type=int, metavar="N", help="sFlow: 1-in-N packets")
    p.add_argument("--polling", type=int, metavar="SECONDS", help="sFlow counter interval")
    p.add_argument("--header", type=int, metavar="BYTES", help="sFlow sampled header size")
    p.add_argument("--sflow", choices=("on", "off"))
    p.add_argument("--sflow-target", action="append", metavar="IP:PORT")
    p.add_argument("--netflow-target", action="append", metavar="IP:PORT")
    p.add_argument("--ipfix-target", action="append", metavar="IP:PORT")
    p = leaf(msub, "flows", "top flows seen by the embedded sFlow collector", cmd_flows)
    p.add_argument("--by", choices=("bytes", "packets"), default="bytes")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--network")
    p.add_argument("--endpoint")
    p.add_argument("--host")
    p.add_argument("--json", action="store_true")
    p = leaf(msub, "interfaces", "port rates from sFlow counters", cmd_interfaces)
    p.add_argument("--json", action="store_true")
    p = leaf(msub, "rt-flows", "sFlow-RT's active flows of one of its flows", cmd_rt_flows)
    p.add_argument("name", help="the sFlow-RT flow, e.g. qingluan_udp")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--agent", default="ALL")
    thr = msub.add_parser("threshold", help="flow-rate thresholds and their reactions")
    tsub = thr.add_subparsers(dest="threshold_command", required=True)
    p = leaf(tsub, "add", "add a threshold", cmd_threshold_add)
    p.add_argument("--id")
    p.add_argument("--metric", choices=("bytes", "packets"), default="bytes")
    p.add_argument("--value", type=float, required=True, help="per second, per flow")
    p.add_argument("--protocol", choices=("any", "tcp", "udp", "icmp"), default="any")
    p.add_argument("--action", choices=("drop", "rate_limit"), required=True)
    p.add_argument("--rate-kbps", type=int)
    p.add_argument("--quiet", type=float, default=30.0, metavar="SECONDS")
    leaf(tsub, "ls", "list the thresholds", cmd_threshold_ls)
    p = leaf(tsub, "rm", "remove a threshold", cmd_threshold_rm)
    p.add_argument("id")
