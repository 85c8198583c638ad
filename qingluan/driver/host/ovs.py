"""The integration bridge and its ports.

The bridge, tunnels and export settings go through ``ovs-vsctl``; the ports of
endpoints, gateways and uplinks (``add_port``, ``del_port``, ``port_names``: on
the path of every ``docker run``) through the native client in
:mod:`qingluan.driver.host.ovsdb`, on the same database target. Every change is
create-or-reuse (``--may-exist``/``--if-exists``) and bounded by the timeout;
an added port is reported only once ovs-vswitchd has opened it. Ownership is
recorded in ``Interface.external_ids`` so a restarted driver and the start-up
sweep find qingluan's ports again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qingluan.driver.host.commands import HostError, Runner
from qingluan.driver.host.ovsdb import Ovsdb, decode
from qingluan.model import DatapathType

log = logging.getLogger(__name__)

OWNER_KEY = "qingluan-owner"
OWNER = "qingluan"
ENDPOINT_KEY = "qingluan-endpoint"
NETWORK_KEY = "qingluan-network"
UPLINK_KEY = "qingluan-uplink"  # value: the physical network the NIC carries

DEFAULT_MAX_BACKOFF_MS = 1000
USERSPACE_TSO_KEY = "userspace-tso-enable"


def parse_ovs_bool(raw: str, default: bool = False) -> bool:
    """An ``other_config`` value as ovs-vswitchd reads it (``smap_get_bool``).

    ``raw`` is what ``ovs-vsctl --if-exists get`` prints: empty for a missing
    key, else the value, quoted when it is not a bare word. With a false
    default only ``true`` (any case) is true, as in OVS; with a true default
    only ``false`` is false.
    """
    value = raw.strip().strip('"').strip()
    if not value:
        return default
    if default:
        return value.lower() != "false"
    return value.lower() == "true"


def detect_datapath_type(sys_module: Path = Path("/sys/module/openvswitch")) -> DatapathType:
    """``system`` when the kernel can serve an OVS datapath, else ``netdev``.

    ``/sys/module/openvswitch`` exists once the module is loaded. Otherwise ask
    generic netlink for the ``ovs_datapath`` family: that also finds a
    built-in datapath (which has no ``/sys/module`` entry) and lets the kernel
    autoload the module where loading is allowed. ``Open_vSwitch.datapath_types``
    is no help: it lists both types whether or not the kernel has the module.
    """
    if sys_module.exists():
        return DatapathType.SYSTEM
    try:
        from pyroute2.netlink.generic import GenericNetlinkSocket

        sock = GenericNetlinkSocket()
        try:
            sock.discovery("ovs_datapath")
        finally:
            sock.close()
    except Exception:
        return DatapathType.NETDEV
    return DatapathType.SYSTEM


class Ovs:
    def __init__(self, runner: Runner, *, db: str | None = None, timeout: int = 10) -> None:
        self._runner = runner
        self._db = db
        self._timeout = timeout
        self.native = Ovsdb(db, timeout=timeout)

    def vsctl(self, *args: str) -> str:
        cmd = ["ovs-vsctl", f"--timeout={self._timeout}"]
        if self._db:
            cmd.append(f"--db={self._db}")
        return self._runner.run([*cmd, *args], timeout=self._timeout + 5).stdout

    def rows(self, table: str, columns: Sequence[str], *records: str) -> list[dict[str, Any]]:
        """``list TABLE [RECORD...]`` as dicts of the given columns."""
        out = self.vsctl("--format=json", f"--columns={','.join(columns)}", "list", table, *records)
        doc = json.loads(out)
        return [
            {h: decode(v) for h, v in zip(doc["headings"], row, strict=True)} for row in doc["data"]
        ]

    # ---- the switch ----

    def userspace_tso_enabled(self) -> bool:
        """``other_config:userspace-tso-enable`` of the ``Open_vSwitch`` record (missing: false).

        This is the database value. ovs-vswitchd (3.1) turns userspace TSO on
        as soon as it sees the key true and can only turn it off again by a
        restart, so true here means "on" (for every port opened since); false
        may still mean "on" after a key reset without a restart, which is the
        safe direction for the caller (it then keeps TX offloads off).
        """
        out = self.vsctl(
            "--if-exists", "get", "Open_vSwitch", ".", f"other_config:{USERSPACE_TSO_KEY}"
        )
        return parse_ovs_bool(out)

    # ---- the bridge ----

    def ensure_bridge(
        self,
        name: str,
        *,
        datapath_type: DatapathType,
        controller_target: str,
        max_backoff_ms: int = DEFAULT_MAX_BACKOFF_MS,
    ) -> int:
        """Create or fix the bridge; return its datapath id, pinned in other_config.

        fail_mode=secure: without a controller the bridge keeps its flows and
        forwards nothing else (standalone would turn it into a learning switch
        and lose isolation). The datapath id is pinned because OVS otherwise
        derives it from a port MAC, and the controller knows hosts by dpid.
        """
        self.vsctl(
            "--may-exist",
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            f"datapath_type={datapath_type.value}",
            "fail_mode=secure",
            "protocols=OpenFlow13",
            "other_config:disable-in-band=true",
        )
        current = [c.strip() for c in self.vsctl("get-controller", name).splitlines() if c.strip()]
        if current != [controller_target]:
            log.info("bridge %s: controller %s (was %s)", name, controller_target, current)
            self.vsctl("set-controller", name, controller_target)
        self.vsctl("set", "controller", name, f"max_backoff={max_backoff_ms}")
        other = self.rows("bridge", ["other_config"], name)[0]["other_config"]
        if "datapath-id" in other:
            return int(other["datapath-id"], 16)
        dpid = self.datapath_id(name)
        self.vsctl("set", "bridge", name, f"other_config:datapath-id={dpid:016x}")
        return dpid

    def datapath_id(self, bridge: str, wait: float = 5.0) -> int:
        deadline = time.monotonic() + wait
        while True:
            raw = self.vsctl("get", "bridge", bridge, "datapath_id").strip().strip('"')
            if raw and raw != "[]":
                return int(raw, 16)
            if time.monotonic() > deadline:
                raise HostError(f"bridge {bridge} has no datapath id after {wait:.0f} s")
            time.sleep(0.1)

    def bridge_settings(self, bridge: str) -> dict[str, Any]:
        cols = ["name", "datapath_type", "fail_mode", "protocols", "other_config", "datapath_id"]
        row = self.rows("bridge", cols, bridge)[0]
        ctl = self.rows("controller", ["target", "max_backoff"], bridge)
        row["controllers"] = ctl
        return row

    # ---- ports ----

    def add_port(self, bridge: str, port: str, external_ids: Mapping[str, str]) -> int | None:
        """Attach ``port`` with these external_ids (or keep it and set them); fail (and
        detach it) if OVS cannot open it. Returns the interface index OVS reports (None:
        not reported yet)."""
        ofport, error, ifindex = self.native.add_port(bridge, port, external_ids)
        if error or ofport == -1:
            self.del_port(bridge, port)
            raise HostError(
                f"Open vSwitch cannot attach {port} to {bridge}: {error or 'no ofport'}"
            )
        return ifindex

    def ensure_vxlan_port(
        self, bridge: str, port: str, *, local_ip: str, external_ids: Mapping[str, str]
    ) -> None:
        """A flow-based VXLAN port: the controller's flows set ``tun_id`` and ``tun_dst``."""
        ids = [f"external_ids:{k}={v}" for k, v in sorted(external_ids.items())]
        self.vsctl(
            "--may-exist",
            "add-port",
            bridge,
            port,
            "--",
            "set",
            "interface",
            port,
            "type=vxlan",
            "options:remote_ip=flow",
            "options:key=flow",
            f"options:local_ip={local_ip}",
            *ids,
        )
        row = self.rows("interface", ["ofport", "error"], port)[0]
        if row["error"] or row["ofport"] == -1:
            raise HostError(
                f"Open vSwitch cannot make the VXLAN port {port} on {bridge}: "
                f"{row['error'] or 'no ofport'}"
            )

    def ensure_plain_bridge(
        self, name: str, *, datapath_type: DatapathType, hwaddr: str | None = None
    ) -> None:
        """A bridge that forwards by itself (NORMAL, no controller): the underlay bridge.
        ``hwaddr`` pins the MAC of its own interface."""
        self.vsctl(
            "--may-exist",
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            f"datapath_type={datapath_type.value}",
            "fail_mode=standalone",
            *([f"other_config:hwaddr={hwaddr}"] if hwaddr else []),
        )

    def del_port(self, bridge: str, port: str, *, wait: bool = False) -> None:
        """Detach ``port`` from ``bridge`` if it is there (never from another bridge).
        ``wait``: until ovs-vswitchd applied it, before the same name is added again."""
        self.native.del_port(bridge, port, wait=wait)

    def port_names(self, bridge: str) -> list[str]:
        return self.native.port_names(bridge)

    def has_port(self, bridge: str, port: str) -> bool:
        return self.native.port_uuid(bridge, port) is not None
