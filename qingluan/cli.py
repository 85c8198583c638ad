"""The ``qingluan`` command: run the controller or the driver, or look at the state.

``qingluan controller`` is what ``ryu-manager qingluan.controller`` was (os-ken,
Ryu's maintained continuation, has no manager CLI).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from qingluan.cli_monitoring import add_monitoring_commands

DEFAULT_API = "http://127.0.0.1:6680"
DEFAULT_STATE_DIR = Path("/var/lib/qingluan")


def _controller_url(args: argparse.Namespace) -> str:
    return str(args.controller or os.environ.get("QINGLUAN_CONTROLLER") or DEFAULT_API)


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _add_controller_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--controller",
        metavar="URL",
        help=f"controller REST API (env QINGLUAN_CONTROLLER, default {DEFAULT_API})",
    )


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_controller(args: argparse.Namespace) -> int:
    from qingluan.controller.main import config_from_args, run_controller

    _setup_logging(args.log_level)
    run_controller(config_from_args(args))
    return 0


def cmd_driver(args: argparse.Namespace) -> int:
    from qingluan.driver.main import config_from_args, run_driver

    _setup_logging(args.log_level)
    run_driver(config_from_args(args))
    return 0


def _call(
    method: str,
    url: str,
    *,
    body: object = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> object:
    """One REST call; exits with the controller's error (``{"error"}``) or why it failed."""
    import httpx

    try:
        reply = httpx.request(
            method, url, json=body, params=params, headers=headers, timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise SystemExit(f"qingluan: cannot reach the controller at {url}: {exc}") from None
    if reply.status_code >= 400:
        try:
            message = reply.json().get("error", reply.text)
        except ValueError:
            message = reply.text
        raise SystemExit(f"qingluan: {message}")
    return reply.json() if reply.content else None


def _get(url: str) -> object:
    return _call("GET", url)


def _send(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    body: object = None,
    params: dict[str, str] | None = None,
) -> object:
    """An authenticated call (the token from ``--token-file``); exits with the error."""
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"qingluan: cannot read the API token {args.token_file}: {exc}") from None
    return _call(
        method,
        f"{_controller_url(args)}/v1{path}",
        body=body,
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60.0,
    )


def remove_one(args: argparse.Namespace, path: str, label: str, done: str = "removed") -> int:
    """``DELETE <path>/<args.id>`` (authenticated), then say so."""
    _send(args, "DELETE", f"{path}/{args.id}")
    print(f"{label} {args.id} {done}")
    return 0


def cmd_host_rm(args: argparse.Namespace) -> int:
    params = {"force": "true"} if args.force else None
    _send(args, "DELETE", f"/hosts/{args.name}", params=params)
    print(f"host {args.name} removed")
    return 0


def parse_selector(text: str | None) -> dict[str, str] | None:
    """``cidr=10.0.0.0/8``, ``network=web``, ``container=db1``, ``label=tier=db``."""
    if text is None:
        return None
    kind, sep, value = text.partition("=")
    if not sep or kind not in ("cidr", "network", "container", "label"):
        raise SystemExit(
            f"qingluan: selector {text!r}: write cidr=..., network=..., container=... "
            "or label=KEY=VALUE"
        )
    return {kind: value}


def _add_given(body: dict[str, object], args: argparse.Namespace, keys: Sequence[str]) -> None:
    """The optional flags that were given, and the ``--src``/``--dst`` selectors (if the
    command has them)."""
    for key in keys:
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    for side in ("src", "dst"):
        selector = parse_selector(getattr(args, side, None))
        if selector is not None:
            body[side] = selector


def cmd_acl_add(args: argparse.Namespace) -> int:
    body: dict[str, object] = {
        "direction": args.direction,
        "action": args.action,
        "priority": args.priority,
        "protocol": args.protocol,
        "stateful": not args.stateless,
        "description": args.description,
    }
    _add_given(body, args, ("id", "scope", "ports", "icmp_type"))
    rule = _send(args, "POST", "/acls", body=body)
    assert isinstance(rule, dict)
    print(f"ACL rule {rule['id']} added")
    return 0


def cmd_acl_ls(args: argparse.Namespace) -> int:
    from qingluan.model import AclRule
    from qingluan.status_view import render_acls

    data = _get(_controller_url(args) + "/v1/acls")
    assert isinstance(data, list)
    print(render_acls([AclRule.model_validate(r) for r in data]))
    return 0


def cmd_steer_add(args: argparse.Namespace) -> int:
    body: dict[str, object] = {
        "action": args.action,
        "priority": args.priority,
        "protocol": args.protocol,
        "description": args.description,
    }
    keys = ("id", "ports", "dscp", "rate_kbps", "burst_kbits", "mirror_container", "mirror_host",
            "mirror_port", "via")  # fmt: skip
    _add_given(body, args, keys)
    rule = _send(args, "POST", "/steering", body=body)
    assert isinstance(rule, dict)
    print(f"steering rule {rule['id']} added")
    return 0


def cmd_steer_ls(args: argparse.Namespace) -> int:
    data = _get(_controller_url(args) + "/v1/steering")
    print(json.dumps(data, indent=2))
    return 0


def cmd_steer_rm(args: argparse.Namespace) -> int:
    return remove_one(args, "/steering", "steering rule")


def cmd_raw_add(args: argparse.Namespace) -> int:
    match: dict[str, object] = {}
    for item in args.match:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"qingluan: --match {item!r}: write FIELD=VALUE")
        try:
            match[name] = int(value, 0)
        except ValueError:
            match[name] = value  # MACs, addresses
    body: dict[str, object] = {
        "priority": args.priority,
        "match": match,
        "action": args.action,
        "description": args.description,
    }
    _add_given(body, args, ("id", "host", "set_dscp"))
    flow = _send(args, "POST", "/rawflows", body=body)
    assert isinstance(flow, dict)
    print(f"raw flow {flow['id']} added")
    return 0


def cmd_raw_ls(args: argparse.Namespace) -> int:
    print(json.dumps(_get(_controller_url(args) + "/v1/rawflows"), indent=2))
    return 0


def cmd_raw_rm(args: argparse.Namespace) -> int:
    return remove_one(args, "/rawflows", "raw flow")


def cmd_acl_rm(args: argparse.Namespace) -> int:
    return remove_one(args, "/acls", "ACL rule")


def cmd_status(args: argparse.Namespace) -> int:
    from qingluan.api_schema import Status
    from qingluan.status_view import render_status

    data = _get(_controller_url(args) + "/v1/status")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    status = Status.model_validate(data)
    print(render_status(status))
    disconnected = [h.host.name for h in status.hosts if not h.connected]
    return 1 if disconnected else 0


def cmd_flows(args: argparse.Namespace) -> int:
    from qingluan.api_schema import FlowDump
    from qingluan.status_view import render_flows

    dump = FlowDump.model_validate(_get(f"{_controller_url(args)}/v1/hosts/{args.host}/flows"))
    print(render_flows(dump))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qingluan",
        description="qingluan (青鸾): SDN network plugin for Docker on Open vSwitch",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ctl = sub.add_parser("controller", help="run the controller (OpenFlow + REST API)")
    ctl.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    ctl.add_argument("--api-host", default="127.0.0.1", help="REST listen address")
    ctl.add_argument("--api-port", type=int, default=6680)
    ctl.add_argument("--openflow-host", default="0.0.0.0", help="OpenFlow listen address")
    ctl.add_argument("--openflow-port", type=int, default=6653)
    ctl.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="NAME=CIDR",
        help="address range of a named pool, e.g. nat=10.128.0.0/16 (repeatable)",
    )
    ctl.add_argument("--resync-interval", type=float, default=30.0, metavar="SECONDS")
    ctl.add_argument(
        "--sflow-host", default=None, help="sFlow collector address (default: --openflow-host)"
    )
    ctl.add_argument(
        "--sflow-port", type=int, default=6343, help="sFlow collector UDP port (0: none)"
    )
    ctl.add_argument(
        "--sflow-rt", default=None, metavar="URL", help="take threshold events from sFlow-RT"
    )
    ctl.add_argument(
        "--sflow-rt-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="sFlow-RT flows, thresholds and reactions (YAML; default: built in)",
    )
    ctl.add_argument("--log-level", default="info")
    ctl.set_defaults(func=cmd_controller)

    drv = sub.add_parser("driver", help="run the Docker network and IPAM driver of this host")
    _add_controller_arg(drv)
    drv.add_argument("--host-name", default=None, help="this host's name (default: hostname)")
    drv.add_argument("--token-file", type=Path, default=DEFAULT_STATE_DIR / "token")
    drv.add_argument(
        "--openflow-target",
        default="tcp:127.0.0.1:6653",
        help="where the bridge finds the controller (ovs-vsctl set-controller syntax)",
    )
    drv.add_argument("--bridge", default="br-ql", help="integration bridge name")
    drv.add_argument("--ovsdb", default=None, help="OVSDB socket, e.g. unix:/run/ovs/db.sock")
    drv.add_argument(
        "--ovs-rcvbuf",
        type=_non_negative_int,
        default=None,
        metavar="BYTES",
        help="userspace datapath: receive buffer of ovs-vswitchd's packet sockets for the "
        "bridge's ports (default 4194304; 0: the system default)",
    )
    drv.add_argument("--plugin-dir", type=Path, default=Path("/run/docker/plugins"))
    drv.add_argument("--chain-prefix", default="QINGLUAN", help="prefix of iptables chains")
    drv.add_argument("--datapath", choices=("auto", "system", "netdev"), default="auto")
    drv.add_argument(
        "--uplink",
        action="append",
        default=[],
        metavar="PHYSNET:NIC",
        help="host NIC of a physical network for flat networks, e.g. physnet1:eth1 "
        "(repeatable; never the NIC of the default route)",
    )
    drv.add_argument(
        "--underlay-address",
        default=None,
        metavar="IP/LEN",
        help="this host's VXLAN tunnel endpoint address, e.g. 172.31.0.11/24",
    )
    drv.add_argument(
        "--underlay-nic",
        default=None,
        metavar="NIC",
        help="userspace datapath: the NIC that carries the underlay; it goes on bridge "
        "br-qlphy with the underlay address (never the NIC of the default route)",
    )
    drv.add_argument(
        "--resync-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="repeat the host sync (bridge, sweep, iptables) this often; 0: only at start",
    )
    drv.add_argument(
        "--docker-host",
        default=None,
        metavar="unix://PATH",
        help="local Docker API, asked for network and container names (default: env "
        "DOCKER_HOST if it is unix://..., else unix:///run/docker.sock)",
    )
    drv.add_argument(
        "--ids",
        choices=("suricata", "snort"),
        default=None,
        help="inspect ids=true networks: suricata (started and supervised by the driver on "
        "the mirror port qlids1) or snort (yours: alert_unixsock into --ids-dir)",
    )
    drv.add_argument(
        "--ids-rules",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="Suricata rule file (repeatable; default: qingluan's example rules)",
    )
    drv.add_argument(
        "--ids-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the IDS sockets, config and logs (default /run/qingluan/ids)",
    )
    drv.add_argument(
        "--settings-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="look at the controller's monitoring settings this often (default 5)",
    )
    drv.add_argument(
        "--sflow-agent",
        default=None,
        metavar="DEV|IP",
        help="sFlow agent address or device (default: the route towards the collector)",
    )
    drv.add_argument("--log-level", default="info")
    drv.set_defaults(func=cmd_driver)

    add_monitoring_commands(sub, _add_controller_arg)

    st = sub.add_parser("status", help="hosts, networks and endpoints")
    _add_controller_arg(st)
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    st.set_defaults(func=cmd_status)

    hs = sub.add_parser("host", help="manage registered hosts")
    hsub = hs.add_subparsers(dest="host_command", required=True)
    rm = hsub.add_parser("rm", help="forget a host (--force: with its networks and endpoints)")
    _add_controller_arg(rm)
    rm.add_argument("name")
    rm.add_argument("--force", action="store_true", help="also for a host that still has networks")
    rm.add_argument("--token-file", type=Path, default=DEFAULT_STATE_DIR / "token")
    rm.set_defaults(func=cmd_host_rm)

    acl = sub.add_parser("acl", help="ordered ACL rules (add, ls, rm)")
    asub = acl.add_subparsers(dest="acl_command", required=True)
    add = asub.add_parser("add", help="add a rule; returns once every bridge holds it")
    _add_controller_arg(add)
    add.add_argument("--token-file", type=Path, default=DEFAULT_STATE_DIR / "token")
    add.add_argument("--id", help="the rule's name (default: acl-N)")
    add.add_argument("--priority", type=int, default=100, help="1-4000, higher first; unique")
    add.add_argument("--scope", help="a network (name or id); default: every network")
    add.add_argument("--direction", choices=("ingress", "egress"), required=True)
    add.add_argument("--src", metavar="KIND=VALUE", help="cidr=, network=, container=, label=K=V")
    add.add_argument("--dst", metavar="KIND=VALUE", help="as --src")
    add.add_argument("--protocol", choices=("any", "tcp", "udp", "icmp"), default="any")
    add.add_argument("--ports", help="destination port or range (tcp/udp), e.g. 8000-8080")
    add.add_argument("--icmp-type", type=int, help="icmp only, e.g. 8 (echo request)")
    add.add_argument("--action", choices=("allow", "deny"), required=True)
    add.add_argument("--stateless", action="store_true", help="every packet, not connections")
    add.add_argument("--description", default="")
    add.set_defaults(func=cmd_acl_add)
    ls = asub.add_parser("ls", help="the rules, highest priority first")
    _add_controller_arg(ls)
    ls.set_defaults(func=cmd_acl_ls)
    rm_acl = asub.add_parser("rm", help="remove a rule")
    _add_controller_arg(rm_acl)
    rm_acl.add_argument("--token-file", type=Path, default=DEFAULT_STATE_DIR / "token")
    rm_acl.add_argument("id")
    rm_acl.set_defaults(func=cmd_acl_rm)

    steer = sub.add_parser(
        "steer", help="traffic steering: drop, dscp, mirror, rate_limit (add, ls, rm)"
    )
    ssub = steer.add_subparsers(dest="steer_command", required=True)
    sadd = ssub.add_parser("add", help="add a rule; returns once every bridge holds it")
    _add_controller_arg(sadd)
    sadd.add_argument("--token-file", type=Path, default=DEFAULT_STATE_DIR / "token")
    sadd.add_argument("--id", help="the rule's name (default: steer-N)")
    sadd.add_argument("--priority", type=int, default=100, help="1-4000, higher first; unique")
    sadd.add_argument("--src", metavar="KIND=VALUE", help="cidr=, network=, container=, label=K=V")
    sadd.add_argument("--dst", metavar="KIND=VALUE", help="as --src")
    sadd.add_argument("--protocol", choices=("any", "tcp", "udp", "icmp"), default="any")
    sadd.add_argument("--ports", help="destination port or range (tcp/udp)")
    sadd.add_argument(
        "--action", choices=("drop", "dscp", "mirror", "rate_limit", "redirect"), required=True
    )
    sadd.add_argument("--dscp", type=int, help="dscp: the value to mark, 0-63")
    sadd.add_argument("--rate-kbps", type=int, help="rate_limit: kbit/s above which to drop")
    sadd.add_argument("--burst-kbits", type=int, help="rate_limit: burst (default rate/10)")
    sadd.add_argument("--mirror-container", help="mirror: copies to this container")
    sadd.add_argument("--mirror-host", help="mirror: copies to a port of this host's bridge")
    sadd.add_argument("--mirror-port", help="mirror: that port's name")
    sadd.add_argument("--via", help="redirect: the service container (on the sender's host)")
    sadd.add_argument("--description", default="")
    sadd.set_defaults(func=cmd_steer_add)
    sls = ssub.add_parser("ls", help="the rules, highest priority first")
    _add_controller_arg(sls)
    sls.set_defaults(func=cmd_steer_ls)
    srm = ssub.add_parser("rm", help="remove a rule")
    _add_controller_arg(srm)
    srm.add_argument("--token-file", type=Path, default=DEFAULT_STATE_DIR / "token")
    srm.add_argument("id")
    srm.set_defaults(func=cmd_steer_rm)

    raw = sub.add_parser("rawflow", help="experts' flows in the reserved table (add, ls, rm)")
    rsub = raw.add_subparsers(dest="raw_command", required=True)
    radd = rsub.add_parser("add", help="add a flow; returns once the bridges hold it")
    _add_controller_arg(radd)
    radd.add_argument("--token-file", type=Path, default=DEFAULT_STATE_DIR / "token")
    radd.add_argument("--id")
    radd.add_argument("--host", help="only this host's bridge (default: every)")
    radd.add_argument("--priority", type=int, default=100, help="1-60000")
    radd.add_argument("--match", action="append", default=[], metavar="FIELD=VALUE",
                      help="e.g. ipv4_dst=10.128.0.0/24, tcp_dst=22 (repeatable)")  # fmt: skip
    radd.add_argument("--action", choices=("drop", "continue"), required=True)
    radd.add_argument("--set-dscp", type=int, help="continue with this DSCP (0-63)")
    radd.add_argument("--description", default="")
    radd.set_defaults(func=cmd_raw_add)
    rls = rsub.add_parser("ls", help="the raw flows")
    _add_controller_arg(rls)
    rls.set_defaults(func=cmd_raw_ls)
    rrm = rsub.add_parser("rm", help="remove a raw flow")
    _add_controller_arg(rrm)
    rrm.add_argument("--token-file", type=Path, default=DEFAULT_STATE_DIR / "token")
    rrm.add_argument("id")
    rrm.set_defaults(func=cmd_raw_rm)

    fl = sub.add_parser("flows", help="the flows of a host's bridge")
    _add_controller_arg(fl)
    fl.add_argument("host")
    fl.set_defaults(func=cmd_flows)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
