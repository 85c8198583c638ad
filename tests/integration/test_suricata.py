"""Real Suricata on a veth in a namespace of its own, its alerts received over EVE unix_stream.

Two namespaces (``qlsu-*``) joined by a veth, 10.78.0.1/24 and 10.78.0.2/24;
Suricata captures (AF_PACKET) the end in the second namespace, with the shipped
example rules. The veth keeps TX checksum offload on, so Suricata sees packets
whose checksums were never filled in, as it does for packets mirrored by the
userspace datapath. Nothing outside the two namespaces is touched.

Also here: the supervisor's restart backoff and bounded stop, with a fake
``suricata`` binary.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qingluan.driver.ids.config import DEFAULT_RULES
from qingluan.driver.ids.eve import EveAlert, EveListener
from qingluan.driver.ids.suricata import IdsError, SuricataSupervisor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MODULE_BUDGET = 85.0  # s, for everything in this file
READY_TIMEOUT = 40.0
ALERT_TIMEOUT = 10.0
ADDR_A, ADDR_B = "10.78.0.1", "10.78.0.2"
MARKER = "QINGLUAN-IDS-TEST"
SID_ICMP, SID_HTTP = 9000001, 9000002

# an ICMP echo request with a chosen payload (busybox ping -p takes a single byte);
# exits 0 when the echo reply came back
ICMP_ECHO = textwrap.dedent(
    """
    import os, socket, struct, sys
    def csum(b):
        b += b"\\0" * (len(b) % 2)
        s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
        s = (s >> 16) + (s & 0xFFFF)
        return ~(s + (s >> 16)) & 0xFFFF
    dst, payload = sys.argv[1], sys.argv[2].encode()
    ident, seq = os.getpid() & 0xFFFF, int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(3)
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    s.sendto(struct.pack("!BBHHH", 8, 0, csum(head + payload), ident, seq) + payload, (dst, 0))
    while True:
        data, _ = s.recvfrom(65535)
        ihl = (data[0] & 15) * 4
        if data[ihl] == 0 and struct.unpack("!HH", data[ihl + 4 : ihl + 8]) == (ident, seq):
            sys.exit(0)
    """
)

HTTP_GET = textwrap.dedent(
    """
    import sys, urllib.error, urllib.request
    try:
        urllib.request.urlopen(sys.argv[1], timeout=5).read()
    except urllib.error.HTTPError:
        pass
    """
)


@pytest.fixture(scope="module")
def _module_start() -> float:
    """When the first test of this module started (not when it was collected)."""
    return time.monotonic()


@pytest.fixture(autouse=True)
def _module_budget(_module_start: float) -> None:
    spent = time.monotonic() - _module_start
    if spent > MODULE_BUDGET:
        pytest.fail(f"tests/integration/test_suricata.py over its {MODULE_BUDGET:.0f} s budget")


def run(*argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()}")
    return done


def require_suricata() -> None:
    if shutil.which("suricata") is None:
        pytest.fail("Suricata is not installed: run scripts/install-suricata", pytrace=False)


def netns_pids(ns: str) -> list[int]:
    done = run("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def netns_exists(ns: str) -> bool:
    return ns in run("ip", "netns", "list").stdout.split()


@dataclass
class Lab:
    ns_a: str
    ns_b: str
    veth_b: str
    workdir: Path
    listener: EveListener
    supervisor: SuricataSupervisor
    alerts: queue.Queue[EveAlert]
    startup: float  # s from start() to "Engine started"

    def ping(self, payload: str, seq: int = 1) -> None:
        run(
            "ip",
            "netns",
            "exec",
            self.ns_a,
            sys.executable,
            "-c",
            ICMP_ECHO,
            ADDR_B,
            payload,
            str(seq),
        )

    def drain(self) -> list[EveAlert]:
        got: list[EveAlert] = []
        with contextlib.suppress(queue.Empty):
            while True:
                got.append(self.alerts.get_nowait())
        return got

    def wait_alert(
        self, sid: int, timeout: float = ALERT_TIMEOUT
    ) -> tuple[EveAlert, list[EveAlert]]:
        """The first alert with ``sid`` and the alerts that came before it."""
        before: list[EveAlert] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no alert {sid} within {timeout} s (got {[a.signature_id for a in before]};"
                    f" listener {self.listener.stats()};"
                    f" suricata {self.supervisor.recent_output()})"
                )
            try:
                alert = self.alerts.get(timeout=left)
            except queue.Empty:
                continue
            if alert.signature_id == sid:
                return alert, before
            before.append(alert)


@contextlib.contextmanager
def suricata_lab() -> Iterator[Lab]:
    """Namespaces, veth, EVE listener, Suricata; everything removed on the way out."""
    require_suricata()
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"qlsu-{tag}-a", f"qlsu-{tag}-b"
    veth_a, veth_b = f"qlsu-{tag}a", f"qlsu-{tag}b"
    workdir = Path(tempfile.mkdtemp(prefix="qlsu-"))
    listener: EveListener | None = None
    supervisor: SuricataSupervisor | None = None
    try:
        run("ip", "netns", "add", ns_a)
        run("ip", "netns", "add", ns_b)
        # created straight into the namespaces: never in the machine's own
        run(
            "ip",
            "link",
            "add",
            veth_a,
            "netns",
            ns_a,
            "type",
            "veth",
            "peer",
            "name",
            veth_b,
            "netns",
            ns_b,
        )
        for ns, dev, addr in ((ns_a, veth_a, ADDR_A), (ns_b, veth_b, ADDR_B)):
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        alerts: queue.Queue[EveAlert] = queue.Queue()
        sock = workdir / "eve.sock"
        listener = EveListener(sock, alerts.put).start()
        supervisor = SuricataSupervisor(veth_b, sock, workdir / "run", [DEFAULT_RULES], netns=ns_b)
        t0 = time.monotonic()
        supervisor.start()
        if not supervisor.wait_ready(READY_TIMEOUT):
            raise AssertionError(
                f"Suricata not ready within {READY_TIMEOUT} s: {supervisor.recent_output()}"
            )
        startup = time.monotonic() - t0
        yield Lab(ns_a, ns_b, veth_b, workdir, listener, supervisor, alerts, startup)
    finally:
        if supervisor is not None:
            supervisor.close()
        if listener is not None:
            listener.close()
        for ns in (ns_a, ns_b):
            for pid in netns_pids(ns):  # only what runs in our own namespaces
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        if not os.environ.get("QINGLUAN_KEEP_TEST_LOGS"):
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with suricata_lab() as it:
        yield it


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# -- real Suricata ------------------------------------------------------------------------


def test_suricata_starts_and_connects_to_the_listener(lab: Lab):
    print(f"\nSuricata ready {lab.startup:.2f} s after start()")
    assert lab.supervisor.running() and lab.supervisor.ready()
    assert lab.startup < READY_TIMEOUT
    assert lab.listener.wait_connected(5.0)
    assert lab.supervisor.pid is not None
    comm = Path(f"/proc/{lab.supervisor.pid}/comm").read_text().strip()
    assert comm.startswith("Suricata")  # ip netns exec replaced itself: the pid is Suricata's


def test_marked_ping_raises_a_severity_1_alert(lab: Lab):
    lab.drain()
    t0 = time.monotonic()
    lab.ping(f"..{MARKER}..", seq=1)
    alert, before = lab.wait_alert(SID_ICMP)
    print(f"\nalert {time.monotonic() - t0:.3f} s after the ping: {alert}")
    assert before == []
    assert (alert.src_ip, alert.dest_ip) == (ADDR_A, ADDR_B)
    assert (alert.src_port, alert.dest_port) == (None, None)
    assert alert.proto == "ICMP"
    assert alert.severity == 1
    assert (alert.gid, alert.rev, alert.action) == (1, 1, "allowed")
    assert alert.signature.startswith("QINGLUAN example")
    assert alert.in_iface == lab.veth_b


def test_ping_without_the_marker_raises_no_alert(lab: Lab):
    lab.drain()
    for seq in range(10, 13):
        lab.ping("an ordinary ping payload 0123456789", seq=seq)
    # one worker thread handles the packets in order: the marked ping's alert comes after
    # any alert the plain ones could have raised
    lab.ping(MARKER, seq=13)
    alert, before = lab.wait_alert(SID_ICMP)
    time.sleep(0.3)
    assert before == [] and lab.drain() == []
    assert alert.severity == 1


def test_http_request_for_the_test_uri_raises_a_severity_2_alert(lab: Lab):
    docroot = lab.workdir / "www"
    docroot.mkdir(exist_ok=True)
    (docroot / "qingluan-ids-test").write_text("marker page\n")
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.ns_b,
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            ADDR_B,
            "--directory",
            str(docroot),
            "8080",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://{ADDR_B}:8080/qingluan-ids-test"
        lab.drain()
        assert wait_for(
            lambda: (
                run(
                    "ip",
                    "netns",
                    "exec",
                    lab.ns_a,
                    sys.executable,
                    "-c",
                    HTTP_GET,
                    url,
                    check=False,
                ).returncode
                == 0
            ),
            10.0,
        )
        alert, _ = lab.wait_alert(SID_HTTP)
    finally:
        server.kill()
        server.wait(5)
    assert (alert.src_ip, alert.dest_ip, alert.dest_port) == (ADDR_A, ADDR_B, 8080)
    assert (alert.proto, alert.app_proto) == ("TCP", "http")
    assert alert.severity == 2


def test_supervisor_restarts_suricata_after_kill_9(lab: Lab):
    sup = lab.supervisor
    old, starts, conns = sup.pid, sup.starts, lab.listener.connections
    assert old is not None
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: sup.starts > starts, 10.0), sup.recent_output()
    assert sup.wait_ready(READY_TIMEOUT), sup.recent_output()
    print(f"\nSuricata back {time.monotonic() - t0:.2f} s after kill -9")
    assert sup.pid not in (None, old)
    assert sup.last_exit == -signal.SIGKILL
    assert not Path(f"/proc/{old}").exists()  # reaped
    lab.drain()
    lab.ping(MARKER, seq=20)
    alert, _ = lab.wait_alert(SID_ICMP)
    assert (alert.src_ip, alert.dest_ip, alert.severity) == (ADDR_A, ADDR_B, 1)
    assert lab.listener.connections > conns  # Suricata connected again


def test_restart_on_request(lab: Lab):
    sup = lab.supervisor
    old = sup.pid
    sup.restart()
    assert sup.pid not in (None, old)
    assert sup.wait_ready(READY_TIMEOUT), sup.recent_output()
    lab.drain()
    lab.ping(MARKER, seq=30)
    lab.wait_alert(SID_ICMP)


def test_close_removes_processes_socket_and_namespaces_even_on_failure():
    seen: dict[str, object] = {}
    with pytest.raises(RuntimeError, match="test failure"), suricata_lab() as lab:
        seen.update(
            pid=lab.supervisor.pid,
            sock=lab.listener.path,
            pidfile=lab.supervisor.pidfile,
            namespaces=(lab.ns_a, lab.ns_b),
            workdir=lab.workdir,
        )
        raise RuntimeError("test failure inside the lab")
    pid = seen["pid"]
    assert isinstance(pid, int)
    assert not Path(f"/proc/{pid}").exists()
    assert not Path(str(seen["sock"])).exists()
    assert not Path(str(seen["pidfile"])).exists()
    assert not Path(str(seen["workdir"])).exists() or os.environ.get("QINGLUAN_KEEP_TEST_LOGS")
    namespaces = seen["namespaces"]
    assert isinstance(namespaces, tuple)
    for ns in namespaces:
        assert not netns_exists(ns)


def test_a_bad_rule_file_is_reported_with_suricata_s_message(tmp_path: Path):
    require_suricata()
    bad = tmp_path / "bad.rules"
    bad.write_text(
        "# a comment\n"
        'alert icmp any any -> any any (msg:"typo"; itype:8; contnt:"x"; sid:9100001; rev:1;)\n'
    )
    sup = SuricataSupervisor(
        "lo", Path("/tmp/qlsu-none.sock"), tmp_path / "run", [DEFAULT_RULES, bad]
    )
    with pytest.raises(IdsError) as err:
        sup.start()
    message = str(err.value)
    assert f"{bad} line 2" in message
    assert "unknown rule keyword 'contnt'" in message
    assert not sup.running()
    sup.close()


def test_a_missing_rule_file_is_reported(tmp_path: Path):
    missing = tmp_path / "missing.rules"
    sup = SuricataSupervisor("lo", Path("/tmp/qlsu-none.sock"), tmp_path / "run", [missing])
    with pytest.raises(IdsError, match=f"rule file {missing} does not exist"):
        sup.start()


def test_a_missing_binary_says_how_to_install(tmp_path: Path):
    sup = SuricataSupervisor(
        "lo",
        Path("/tmp/qlsu-none.sock"),
        tmp_path / "run",
        [DEFAULT_RULES],
        binary=str(tmp_path / "no-such-suricata"),
    )
    with pytest.raises(IdsError, match="scripts/install-suricata"):
        sup.start()


# -- supervision, with a fake suricata -------------------------------------------------------


def fake_suricata(tmp_path: Path, body: str) -> str:
    """An executable standing in for suricata: ``-T`` succeeds, a run does ``body``."""
    script = tmp_path / "fake-suricata"
    script.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" -T "*) exit 0 ;; esac\n'
        f'date +%s.%N >> "{tmp_path}/starts"\n'
        f"{body}\n"
    )
    script.chmod(0o755)
    return str(script)


def start_times(tmp_path: Path) -> list[float]:
    path = tmp_path / "starts"
    return [float(x) for x in path.read_text().split()] if path.exists() else []


def test_restarts_back_off_doubling_up_to_the_cap(tmp_path: Path):
    binary = fake_suricata(tmp_path, 'echo "<Error> suricata: fake failure"; exit 3')
    sup = SuricataSupervisor(
        "lo",
        tmp_path / "eve.sock",
        tmp_path / "run",
        [DEFAULT_RULES],
        binary=binary,
        min_backoff=0.1,
        max_backoff=0.4,
    )
    try:
        sup.start()
        assert wait_for(lambda: len(start_times(tmp_path)) >= 6, 10.0)
    finally:
        sup.close()
    times = start_times(tmp_path)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39, gaps
    assert all(g < 0.4 + 0.6 for g in gaps), gaps  # capped (plus process start time)
    assert sup.last_exit == 3
    assert "<Error> suricata: fake failure" in sup.recent_output()
    settled = len(start_times(tmp_path))
    time.sleep(0.6)
    assert len(start_times(tmp_path)) == settled  # closed: no more restarts


def test_close_kills_a_suricata_that_ignores_sigterm(tmp_path: Path):
    binary = fake_suricata(
        tmp_path, "trap '' TERM\necho '<Notice> threads: Engine started.'\nexec sleep 30"
    )
    sup = SuricataSupervisor(
        "lo",
        tmp_path / "eve.sock",
        tmp_path / "run",
        [DEFAULT_RULES],
        binary=binary,
        stop_timeout=0.5,
    )
    sup.start()
    try:
        assert sup.wait_ready(5.0)
        pid = sup.pid
        assert pid is not None
    finally:
        t0 = time.monotonic()
        sup.close()
    assert time.monotonic() - t0 < 3.0
    assert not sup.running() and not sup.ready()
    assert not Path(f"/proc/{pid}").exists()
    assert sup.last_exit == -signal.SIGKILL
    with pytest.raises(IdsError, match="closed"):
        sup.start()


def test_ready_only_after_engine_started(tmp_path: Path):
    binary = fake_suricata(
        tmp_path, "sleep 0.5\necho '<Notice> threads: Engine started.'\nexec sleep 30"
    )
    sup = SuricataSupervisor(
        "lo", tmp_path / "eve.sock", tmp_path / "run", [DEFAULT_RULES], binary=binary
    )
    try:
        sup.start()
        assert sup.running() and not sup.ready()
        assert sup.wait_ready(5.0)
        config = (tmp_path / "run" / "suricata.yaml").read_text()
        assert "filetype: unix_stream" in config and str(DEFAULT_RULES) in config
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    finally:
        sup.close()
