"""pmacct's sFlow collector (``sfacctd``) as an independent reference for tests.

``Sfacctd(workdir, port, netns=...)`` writes a config, runs ``sfacctd -f CONF`` in the
foreground (in ``netns`` if given: the collector must live in the namespace the
sFlow agent sends from) and reads what its ``print`` plugin writes.

How sfacctd 1.7.7 behaves (Debian bookworm's package), and what the config does:

- ``sfacctd_renormalize: true``: every flow sample's packets and bytes are multiplied
  by the sampling rate the agent put in the sample (with OVS at ``sampling=64`` every
  count is a multiple of 64), so ``bytes`` estimates the traffic on the wire and can be
  compared with iperf3's or OpenFlow's counts. Without it the counts are those of the
  sampled packets only (about 1/64 of them).
- bytes are the ``frame_length`` the agent reports; Open vSwitch adds 4 bytes for an
  FCS that is not there (1518 for a 1514-byte frame), so sfacctd's bytes are about
  0.3 % above OpenFlow byte counters for full-size frames.
- the print plugin keeps one cache entry per aggregate key and writes (*purges*) the
  whole cache every ``print_refresh_time`` seconds, then empties it. Each purge writes
  only what arrived since the previous one, and with a fixed file name it overwrites
  the file. ``print_output_file_append: true`` keeps every purge in the file, so
  ``flows()`` sums the records of all purges per key: the totals since the start.
  Nothing is written (the file does not even exist) until some flow sample arrived.
- ``print_output: json`` writes one JSON object per line, per key and purge, e.g.
  ``{"event_type": "purge", "mac_src": ..., "mac_dst": ..., "ip_src": ...,
  "ip_dst": ..., "port_src": 5201, "port_dst": 41234, "ip_proto": "tcp",
  "packets": 64, "bytes": 4224}``. A line still being written is skipped.
- the UDP socket has SO_REUSEPORT: a second sfacctd on the same address and port
  starts without complaint and the kernel then splits the datagrams between the two.
  ``start()`` refuses a port some socket already holds (a plain bind in the namespace).
- the core process blocks its signals while it waits in ``recvfrom`` and only
  handles them after the next datagram: a SIGTERM on an idle collector does nothing.
  ``close()`` therefore sends TERM to the process group (the plugin processes exit at
  once), then one junk datagram to wake the core, and KILLs the group if that did not
  end it within the bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from tests.support.proc import wait_until

SFACCTD = "sfacctd"
PLUGIN = "qlout"  # the name of the print plugin instance in the config
# what the print plugin aggregates on; sampling_rate is left out on purpose (see above)
AGGREGATE = ("src_mac", "dst_mac", "src_host", "dst_host", "proto", "src_port", "dst_port")


class SfacctdError(RuntimeError):
    """sfacctd did not start, or exited early."""


@dataclass(frozen=True)
class SfFlow:
    """One aggregate of the print plugin: a 5-tuple (plus MACs) and its counters.

    - ``src_mac``, ``dst_mac``: lower-case ``aa:bb:cc:dd:ee:ff`` (JSON ``mac_src``, ``mac_dst``)
    - ``src_ip``, ``dst_ip``: the IP addresses as text (``ip_src``, ``ip_dst``); for a
      non-IP frame pmacct writes ``0.0.0.0`` or ``::``
    - ``proto``: the IP protocol as pmacct names it (``ip_proto``): "tcp", "udp",
      "icmp", ... or a number as text for a protocol without a name
    - ``src_port``, ``dst_port``: the TCP/UDP ports (``port_src``, ``port_dst``), 0 otherwise
    - ``packets``, ``bytes``: sampled counts, multiplied by the sampling rate when
      renormalizing (the default here); bytes are frame lengths as the agent reports
      them (Open vSwitch: the Ethernet frame plus 4 for the FCS)
    """

    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    proto: str
    src_port: int
    dst_port: int
    packets: int
    bytes: int

    def key(self) -> tuple[str, str, str, str, str, int, int]:
        return (
            self.src_mac,
            self.dst_mac,
            self.src_ip,
            self.dst_ip,
            self.proto,
            self.src_port,
            self.dst_port,
        )


def render_config(
    *,
    port: int,
    ip: str,
    output_file: Path,
    log_file: Path,
    refresh_time: int = 1,
    renormalize: bool = True,
) -> str:
    """The sfacctd config: one print plugin, JSON lines appended to ``output_file``."""
    if not 1 <= port <= 65535:
        raise ValueError(f"bad UDP port {port}")
    if refresh_time < 1:
        raise ValueError("print_refresh_time is in whole seconds, at least 1")
    lines = [
        "daemonize: false",
        f"logfile: {log_file}",
        f"sfacctd_ip: {ip}",
        f"sfacctd_port: {port}",
        f"sfacctd_renormalize: {'true' if renormalize else 'false'}",
        f"plugins: print[{PLUGIN}]",
        f"aggregate[{PLUGIN}]: {', '.join(AGGREGATE)}",
        f"print_output[{PLUGIN}]: json",
        f"print_output_file[{PLUGIN}]: {output_file}",
        f"print_output_file_append[{PLUGIN}]: true",
        f"print_refresh_time[{PLUGIN}]: {refresh_time}",
    ]
    return "\n".join(lines) + "\n"


def _int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a counter")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value)
    raise ValueError(f"not an integer: {value!r}")


def parse_record(obj: dict[str, object]) -> SfFlow:
    """One JSON object of the print plugin; KeyError/ValueError if it is not a flow."""
    return SfFlow(
        src_mac=str(obj.get("mac_src", "")).lower(),
        dst_mac=str(obj.get("mac_dst", "")).lower(),
        src_ip=str(obj["ip_src"]),
        dst_ip=str(obj["ip_dst"]),
        proto=str(obj.get("ip_proto", "")).lower(),
        src_port=_int(obj.get("port_src", 0)),
        dst_port=_int(obj.get("port_dst", 0)),
        packets=_int(obj["packets"]),
        bytes=_int(obj["bytes"]),
    )


def parse_output(text: str) -> list[SfFlow]:
    """Every flow record of a JSON-lines print output, in file order.

    Blank lines, lines that are not complete JSON objects (the one being written),
    and objects that are not flow records (no ``ip_src``/``packets``/``bytes``) are
    skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        try:
            out.append(parse_record(obj))
        except (KeyError, ValueError):
            continue
    return out


def totals(records: Iterable[SfFlow]) -> list[SfFlow]:
    """Packets and bytes summed per key (records of successive purges), in first-seen order."""
    merged: dict[tuple[str, str, str, str, str, int, int], SfFlow] = {}
    for record in records:
        seen = merged.get(record.key())
        merged[record.key()] = (
            record
            if seen is None
            else replace(
                seen, packets=seen.packets + record.packets, bytes=seen.bytes + record.bytes
            )
        )
    return list(merged.values())


def log_ready(log: str, ip: str, port: int) -> bool:
    """Whether sfacctd's log says the core listens on ``ip:port`` and the print plugin
    has started (it logs its cache size first)."""
    return f"INFO ( default/core ): waiting for sFlow data on {ip}:{port}\n" in log and (
        f"INFO ( {PLUGIN}/print ): cache entries=" in log
    )


def purge_count(log: str) -> int:
    """How many purges of the print plugin the log reports as finished (idle ones too)."""
    return log.count(f"INFO ( {PLUGIN}/print ): *** Purging cache - END")


_BIND = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET,"
    "socket.SOCK_DGRAM)\n"
    "try:\n"
    "    s.bind((sys.argv[1],int(sys.argv[2])))\n"
    "except OSError:\n"
    "    sys.exit(3)\n"
    "print(s.getsockname()[1])\n"
)


def _bind(port: int, netns: str | None, ip: str) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(
        [*prefix, "python3", "-c", _BIND, ip, str(port)],
        capture_output=True,
        text=True,
        timeout=10.0,
        check=False,
    )


def udp_port_free(port: int, netns: str | None = None, ip: str = "127.0.0.1") -> bool:
    """Whether a plain UDP bind to ``ip:port`` succeeds now (in ``netns`` if given)."""
    done = _bind(port, netns, ip)
    if done.returncode not in (0, 3):
        raise SfacctdError(f"cannot probe UDP {ip}:{port}: {done.stderr.strip()}")
    return done.returncode == 0


def free_udp_port(netns: str | None = None, ip: str = "127.0.0.1") -> int:
    """A UDP port nothing is bound to now on ``ip`` (in ``netns`` if given)."""
    done = _bind(0, netns, ip)
    if done.returncode != 0:
        raise SfacctdError(f"cannot find a free UDP port on {ip}: {done.stderr.strip()}")
    return int(done.stdout.strip())


class Sfacctd:
    """One sfacctd in the foreground, with its files under ``workdir/sfacctd-PORT``.

    It listens on the IPv4 address ``ip`` (loopback by default) and UDP ``port`` of
    ``netns`` (a namespace name; None: this one). ``refresh_time`` is the print
    plugin's purge interval in seconds, ``timeout`` bounds every wait."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        netns: str | None = None,
        *,
        ip: str = "127.0.0.1",
        refresh_time: int = 1,
        renormalize: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.ip = ip
        self.netns = netns
        self.refresh_time = refresh_time
        self.renormalize = renormalize
        self.timeout = timeout
        self.dir = Path(workdir) / f"sfacctd-{port}"
        self.conf = self.dir / "sfacctd.conf"
        self.output = self.dir / "flows.json"
        self.logfile = self.dir / "sfacctd.log"
        self.stdout = self.dir / "stdout.log"
        self.popen: subprocess.Popen[bytes] | None = None

    # ---- lifecycle ----

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def start(self) -> Sfacctd:
        """Start sfacctd and wait (bounded) until it listens and its plugin runs."""
        if shutil.which(SFACCTD) is None:
            raise SfacctdError("sfacctd is not installed (apt-get install pmacct)")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not udp_port_free(self.port, self.netns, self.ip):
                raise SfacctdError(
                    f"UDP {self.ip}:{self.port} is taken in {self.netns or 'this namespace'}"
                )
            self.conf.write_text(
                render_config(
                    port=self.port,
                    ip=self.ip,
                    output_file=self.output,
                    log_file=self.logfile,
                    refresh_time=self.refresh_time,
                    renormalize=self.renormalize,
                )
            )
            with self.stdout.open("ab") as out:
                self.popen = subprocess.Popen(
                    [*self._prefix(), SFACCTD, "-f", str(self.conf)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            wait_until(self._ready, self.timeout, f"sfacctd on {self.ip}:{self.port}")
        except BaseException:
            self.close()
            raise
        return self

    def _ready(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise SfacctdError(f"sfacctd exited ({self.popen.returncode}):\n{self.log()}")
        return log_ready(self.log(), self.ip, self.port)

    def log(self) -> str:
        """sfacctd's log and anything it wrote to stdout/stderr."""
        parts = []
        for path in (self.logfile, self.stdout):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def close(self) -> None:
        """Stop sfacctd (TERM, a wake-up datagram, then KILL; bounded) and remove its files.
        Safe to call twice or after a failed start."""
        popen, self.popen = self.popen, None
        if popen is not None:
            self._stop(popen)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop(self, popen: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        if popen.poll() is None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._poke()
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=3.0)
        # the plugin processes, and the core if it did not wake up
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10.0)

    def _poke(self) -> None:
        """One junk datagram to the collector: its core handles signals only after a recv."""
        code = (
            "import socket,sys;"
            "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET,"
            "socket.SOCK_DGRAM);"
            "s.sendto(bytes(8),(sys.argv[1],int(sys.argv[2])))"
        )
        subprocess.run(
            [*self._prefix(), "python3", "-c", code, self.ip, str(self.port)],
            capture_output=True,
            timeout=5.0,
            check=False,
        )

    def __enter__(self) -> Sfacctd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- results ----

    def records(self) -> list[SfFlow]:
        """Every record written so far, one per key and purge."""
        try:
            text = self.output.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return parse_output(text)

    def flows(self) -> list[SfFlow]:
        """Totals per key since the start (the records of every purge, summed)."""
        return totals(self.records())

    def bytes_between(
        self, src_ip: str, dst_ip: str, *, dst_port: int | None = None, proto: str | None = None
    ) -> int:
        """Bytes of every flow from ``src_ip`` to ``dst_ip`` (optionally one port/protocol)."""
        return sum(
            f.bytes
            for f in self.flows()
            if f.src_ip == src_ip
            and f.dst_ip == dst_ip
            and (dst_port is None or f.dst_port == dst_port)
            and (proto is None or f.proto == proto)
        )

    def wait_for_purge(self, timeout: float | None = None) -> None:
        """Wait until one more purge than now has been written (bounded): after the
        traffic stopped, two waits make sure its last samples are in the file."""
        before = purge_count(self.log())
        wait_until(
            lambda: purge_count(self.log()) > before,
            timeout or self.timeout,
            "an sfacctd purge",
        )

    def settle(self, purges: int = 2) -> None:
        """Let ``purges`` purges pass (bounded): whatever was sampled before the call is
        then in the file (the first purge may have started just before)."""
        for _ in range(purges):
            self.wait_for_purge()

    def wait_flows(self, timeout: float | None = None) -> list[SfFlow]:
        """Wait (bounded) until at least one flow was written, and return ``flows()``."""
        return wait_until(self.flows, timeout or self.timeout, "sfacctd to write a flow")
