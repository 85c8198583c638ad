"""``suricata.yaml`` for one mirror port: AF_PACKET in, EVE alerts out to a unix stream socket.

Pure text rendering, no I/O (``debian_config_file`` only looks whether a file exists).
The file is complete on its own (Suricata reads nothing else but the files named
in it) and small: one capture thread in ``workers`` mode, no pcap or file
logging, no stats, no unix-command socket. Checksum checks are off because
packets mirrored by the userspace datapath carry checksums that were never
filled in; with them on, the stream engine would drop every TCP segment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

SURICATA_ETC = Path("/etc/suricata")
DEFAULT_RULES = Path(__file__).with_name("default.rules")

ClusterType = Literal["cluster_flow", "none"]

# sun_path is 108 bytes on Linux, including the terminating NUL
MAX_SOCKET_PATH = 107
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")

# the address and port groups that published rule sets refer to
DEFAULT_HOME_NET = "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16]"
_ADDRESS_GROUPS = (
    ("EXTERNAL_NET", "!$HOME_NET"),
    ("HTTP_SERVERS", "$HOME_NET"),
    ("SMTP_SERVERS", "$HOME_NET"),
    ("SQL_SERVERS", "$HOME_NET"),
    ("DNS_SERVERS", "$HOME_NET"),
    ("TELNET_SERVERS", "$HOME_NET"),
    ("AIM_SERVERS", "$EXTERNAL_NET"),
    ("DC_SERVERS", "$HOME_NET"),
    ("DNP3_SERVER", "$HOME_NET"),
    ("DNP3_CLIENT", "$HOME_NET"),
    ("MODBUS_CLIENT", "$HOME_NET"),
    ("MODBUS_SERVER", "$HOME_NET"),
    ("ENIP_CLIENT", "$HOME_NET"),
    ("ENIP_SERVER", "$HOME_NET"),
)
_PORT_GROUPS = (
    ("HTTP_PORTS", "80"),
    ("SHELLCODE_PORTS", "!80"),
    ("ORACLE_PORTS", "1521"),
    ("SSH_PORTS", "22"),
    ("DNP3_PORTS", "20000"),
    ("MODBUS_PORTS", "502"),
    ("FILE_DATA_PORTS", "[$HTTP_PORTS,110,143]"),
    ("FTP_PORTS", "21"),
    ("GENEVE_PORTS", "6081"),
    ("VXLAN_PORTS", "4789"),
    ("TEREDO_PORTS", "3544"),
)

# used when the distribution's /etc/suricata/classification.config is missing: at least
# the classes of default.rules, so that those load everywhere
FALLBACK_CLASSIFICATION = """\
# config classification: shortname,short description,priority
config classification: not-suspicious,Not Suspicious Traffic,3
config classification: unknown,Unknown Traffic,3
config classification: bad-unknown,Potentially Bad Traffic,2
config classification: attempted-recon,Attempted Information Leak,2
config classification: attempted-dos,Attempted Denial of Service,2
config classification: attempted-user,Attempted User Privilege Gain,1
config classification: attempted-admin,Attempted Administrator Privilege Gain,1
config classification: trojan-activity,A Network Trojan was detected,1
config classification: policy-violation,Potential Corporate Privacy Violation,1
config classification: web-application-activity,Access to a Potentially Vulnerable Web Application,2
config classification: web-application-attack,Web Application Attack,1
config classification: misc-activity,Misc activity,3
config classification: misc-attack,Misc Attack,2
config classification: network-scan,Detection of a Network Scan,3
"""


def debian_config_file(name: str, etc: Path = SURICATA_ETC) -> Path | None:
    """``/etc/suricata/NAME`` when the distribution's package installed it, else None."""
    path = etc / name
    return path if path.is_file() else None


def _q(value: str | Path) -> str:
    """A double-quoted YAML scalar (JSON's string escapes are a subset of YAML's)."""
    return json.dumps(str(value))


def _absolute(what: str, path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"{what} must be an absolute path: {path}")
    return path


def validate_interface(name: str) -> str:
    if not _IFNAME.match(name):
        raise ValueError(f"not a valid interface name: {name!r}")
    return name


def validate_socket_path(path: Path) -> Path:
    _absolute("the EVE socket path", path)
    if len(str(path).encode()) > MAX_SOCKET_PATH:
        raise ValueError(f"unix socket path longer than {MAX_SOCKET_PATH} bytes: {path}")
    return path


def render_suricata_yaml(
    *,
    interface: str,
    socket_path: Path,
    log_dir: Path,
    rule_path: Path,
    rule_files: Sequence[Path | str],
    classification_file: Path | None = None,
    reference_file: Path | None = None,
    threshold_file: Path | None = None,
    cluster_type: ClusterType = "cluster_flow",
    cluster_id: int = 99,
    threads: int = 1,
    home_net: str = DEFAULT_HOME_NET,
    log_level: Literal["error", "warning", "notice", "info"] = "notice",
    extra_vars: Mapping[str, str] | None = None,
) -> str:
    """The whole ``suricata.yaml``.

    ``rule_files`` are names relative to ``rule_path`` or absolute paths (Suricata
    takes those as they are). ``log_dir`` (``default-log-dir``) is where Suricata
    writes ``suricata.log``; nothing else is logged to files. A classification,
    reference or threshold file left at None is not named, so Suricata looks for
    its compiled-in default under /etc/suricata. ``extra_vars`` adds or overrides
    address groups (``HOME_NET`` is ``home_net``).
    """
    validate_interface(interface)
    validate_socket_path(socket_path)
    _absolute("default-log-dir", log_dir)
    _absolute("default-rule-path", rule_path)
    if not rule_files:
        raise ValueError("no rule files given")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    if not 0 <= cluster_id <= 65535:
        raise ValueError(f"cluster-id must be 0..65535, not {cluster_id}")
    if cluster_type not in ("cluster_flow", "none"):
        raise ValueError(f"unsupported cluster-type {cluster_type!r}")

    address_groups = {"HOME_NET": home_net, **dict(_ADDRESS_GROUPS), **(extra_vars or {})}
    lines: list[str] = [
        "%YAML 1.1",
        "---",
        "# written by the qingluan driver for its mirror port; rewritten at every start",
        "vars:",
        "  address-groups:",
        *(f"    {name}: {_q(value)}" for name, value in address_groups.items()),
        "  port-groups:",
        *(f"    {name}: {_q(value)}" for name, value in _PORT_GROUPS),
        "",
        f"default-log-dir: {_q(log_dir)}",
        f"default-rule-path: {_q(rule_path)}",
        "rule-files:",
        *(f"  - {_q(name)}" for name in rule_files),
    ]
    if classification_file is not None:
        lines.append(f"classification-file: {_q(_absolute('classification', classification_file))}")
    if reference_file is not None:
        lines.append(f"reference-config-file: {_q(_absolute('reference', reference_file))}")
    if threshold_file is not None:
        lines.append(f"threshold-file: {_q(_absolute('threshold', threshold_file))}")
    lines += [
        "",
        "runmode: workers",
        "host-mode: sniffer-only",
        "max-pending-packets: 1024",
        "",
        "af-packet:",
        f"  - interface: {_q(interface)}",
        f"    threads: {threads}",
        f"    cluster-id: {cluster_id}",
    ]
    if cluster_type != "none" or threads > 1:
        # fanout needs a type as soon as there is more than one socket
        lines.append(
            f"    cluster-type: {'cluster_flow' if cluster_type == 'none' else cluster_type}"
        )
    lines += [
        "    defrag: yes",
        "    use-mmap: yes",
        "    tpacket-v3: yes",
        "    checksum-checks: no",
        "",
        "capture:",
        "  checksum-validation: none",
        "",
        "outputs:",
        "  - eve-log:",
        "      enabled: yes",
        "      filetype: unix_stream",
        f"      filename: {_q(socket_path)}",
        "      community-id: yes",
        "      types:",
        "        - alert:",
        "            payload: no",
        "            payload-printable: no",
        "            packet: no",
        "            metadata: yes",
        "            http-body: no",
        "            http-body-printable: no",
        "            tagged-packets: no",
        "  - stats:",
        "      enabled: no",
        "  - pcap-log:",
        "      enabled: no",
        "  - fast:",
        "      enabled: no",
        "",
        "logging:",
        f"  default-log-level: {log_level}",
        '  default-log-format: "<%d> %S: "',
        "  outputs:",
        "    - console:",
        "        enabled: yes",
        "    - file:",
        "        enabled: yes",
        "        level: info",
        "        filename: suricata.log",
        "    - syslog:",
        "        enabled: no",
        "",
        "stats:",
        "  enabled: no",
        "unix-command:",
        "  enabled: no",
        "",
        "threading:",
        "  set-cpu-affinity: no",
        "  detect-thread-ratio: 0.5",
        "flow:",
        "  memcap: 64mb",
        "  hash-size: 16384",
        "  prealloc: 2000",
        "  managers: 1",
        "  recyclers: 1",
        "stream:",
        "  memcap: 64mb",
        "  checksum-validation: no",
        "  reassembly:",
        "    memcap: 128mb",
        "    depth: 1mb",
        "defrag:",
        "  memcap: 16mb",
        "  prealloc: no",
        "host:",
        "  memcap: 16mb",
        "  prealloc: 100",
        "detect:",
        "  profile: low",
        "  sgh-mpm-context: auto",
        "",
        "app-layer:",
        "  protocols:",
        "    http:",
        "      enabled: yes",
        "      libhtp:",
        "        default-config:",
        "          personality: IDS",
        "          request-body-limit: 100kb",
        "          response-body-limit: 100kb",
        "    tls:",
        "      enabled: yes",
        "    dns:",
        "      tcp:",
        "        enabled: yes",
        "      udp:",
        "        enabled: yes",
        "    ssh:",
        "      enabled: yes",
        "",
    ]
    return "\n".join(lines)
