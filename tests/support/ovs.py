"""An isolated Open vSwitch for tests: its own ovsdb-server and ovs-vswitchd.

Every instance has its own run/log/db directory under a temporary directory
(``OVS_RUNDIR``, ``OVS_LOGDIR``, ``OVS_DBDIR``, ``OVS_SYSCONFDIR`` are set for
every command it runs), so its control sockets never collide with another
instance or with a system OVS. It can run inside a network namespace
(``ip netns exec NS ...``): the userspace (netdev) datapath creates tap devices
(``ovs-netdev``, one per bridge) in the namespace it runs in, so two instances
in one namespace collide on ``ovs-netdev``: give each instance its own
namespace (``Netns``) unless you know nothing else runs OVS there.

Every wait is bounded; ``stop()`` kills the daemons (TERM, then KILL) and
removes every file, and is safe to call twice or after a failed start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.proc import free_port as local_free_port
from tests.support.proc import wait_until

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
DEFAULT_TIMEOUT = 10.0


class OvsError(RuntimeError):
    """An OVS command failed or a daemon did not come up in time."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers kill(0): look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_pid(pid: int, timeout: float = 5.0) -> None:
    """TERM, wait (bounded), then KILL; returns once the process is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.02)
    if _pid_alive(pid):
        raise OvsError(f"process {pid} survived SIGKILL")


# ---- network namespaces ----------------------------------------------------------


class Netns:
    """A network namespace that a test created and will delete (with its processes)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"qlt-{secrets.token_hex(4)}"
        self._created = False

    def create(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=10)
        self._created = True
        self.run("ip", "link", "set", "lo", "up")
        return self

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *cmd: str, check: bool = True, timeout: float = DEFAULT_TIMEOUT) -> str:
        proc = subprocess.run(
            [*self.prefix(), *cmd], capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise OvsError(f"{' '.join(cmd)} in {self.name}: {proc.stderr.strip()}")
        return proc.stdout

    def delete(self) -> None:
        if not self._created:
            return
        out = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=10
        ).stdout
        for pid in (int(p) for p in out.split()):
            with contextlib.suppress(OvsError):
                kill_pid(pid)
        subprocess.run(["ip", "netns", "delete", self.name], check=False, timeout=10)
        self._created = False

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()


def veth(left: Netns | None, left_dev: str, right: Netns, right_dev: str) -> None:
    """A veth pair ``left_dev`` (in ``left``; None: this namespace) -- ``right_dev`` (in
    ``right``), both up. The right end is made under a temporary name, so that it cannot
    clash with a device of ``left`` while it is still there."""
    tmp = "qlt" + secrets.token_hex(5)
    in_left: list[str] = [*(left.prefix() if left else []), "ip", "link"]
    subprocess.run(
        [*in_left, "add", left_dev, "type", "veth", "peer", "name", tmp], check=True, timeout=10
    )
    subprocess.run([*in_left, "set", tmp, "netns", right.name], check=True, timeout=10)
    right.run("ip", "link", "set", tmp, "name", right_dev)
    right.run("ip", "link", "set", right_dev, "up")
    subprocess.run([*in_left, "set", left_dev, "up"], check=True, timeout=10)


# ---- the OVS instance ------------------------------------------------------------


class OvsInstance:
    """One ovsdb-server + ovs-vswitchd pair with private directories."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        netns: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        userspace_tso: bool = False,
    ) -> None:
        """``userspace_tso``: set ``other_config:userspace-tso-enable=true`` before
        ovs-vswitchd first starts (it is read at start; restarts keep it)."""
        self._own_workdir = workdir is None
        self.userspace_tso = userspace_tso
        self.root = Path(workdir or tempfile.mkdtemp(prefix="qlt-ovs-"))
        self.netns = netns
        self.timeout = timeout
        self.db = self.root / "conf.db"
        self.sock = self.root / "db.sock"
        self.env = {
            **os.environ,
            "OVS_RUNDIR": str(self.root),
            "OVS_LOGDIR": str(self.root),
            "OVS_DBDIR": str(self.root),
            "OVS_SYSCONFDIR": str(self.root),
        }

    # ---- commands ----

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def run(
        self, *cmd: str, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in this instance's environment (and namespace)."""
        argv = [*self._prefix(), *cmd]
        try:
            proc = subprocess.run(
                argv,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise OvsError(f"{' '.join(cmd)}: no answer in {exc.timeout}s") from exc
        if check and proc.returncode != 0:
            raise OvsError(
                f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}"
                f"{self._log_tail()}"
            )
        return proc

    def vsctl(self, *args: str, wait: bool = True) -> str:
        opts = [f"--db=unix:{self.sock}", f"--timeout={int(self.timeout)}"]
        if not wait:
            opts.append("--no-wait")
        return self.run("ovs-vsctl", *opts, *args).stdout

    def ofctl(self, *args: str, check: bool = True) -> str:
        """``ovs-ofctl -O OpenFlow13 ARGS``: the bridges only speak OpenFlow 1.3."""
        return self.run("ovs-ofctl", "-O", "OpenFlow13", *args, check=check).stdout

    def appctl(self, *args: str, target: str = "ovs-vswitchd") -> str:
        return self.run("ovs-appctl", "-t", self._ctl_target(target), *args).stdout

    def _ctl_target(self, target: str) -> str:
        pid = self._pid(target)
        if pid is None:
            raise OvsError(f"{target} is not running")
        return str(self.root / f"{target}.{pid}.ctl")

    # ---- daemons ----

    def start(self) -> OvsInstance:
        """Create the database and start both daemons; on failure, clean up and raise."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not self.db.exists():
                self.run("ovsdb-tool", "create", str(self.db), str(SCHEMA))
            self.run(
                "ovsdb-server",
                str(self.db),
                f"--remote=punix:{self.sock}",
                "--pidfile",
                "--detach",
                "--log-file",
            )
            wait_until(self.sock.exists, self.timeout, "ovsdb-server socket")
            self.vsctl("init", wait=False)
            if self.userspace_tso:
                self.vsctl(
                    "set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=true", wait=False
                )
            self.start_vswitchd()
        except BaseException:
            self.stop()
            raise
        return self

    def start_vswitchd(self) -> None:
        self.run("ovs-vswitchd", f"unix:{self.sock}", "--pidfile", "--detach", "--log-file")
        # a vsctl that waits proves vswitchd has read the database
        self.vsctl("show")

    def stop_vswitchd(self) -> None:
        pid = self._pid("ovs-vswitchd")
        if pid is not None:
            kill_pid(pid)
        (self.root / "ovs-vswitchd.pid").unlink(missing_ok=True)

    def restart_vswitchd(self) -> None:
        """Stop and start ovs-vswitchd only: the database stays, OpenFlow flows are lost."""
        self.stop_vswitchd()
        self.start_vswitchd()

    def vswitchd_pid(self) -> int | None:
        return self._pid("ovs-vswitchd")

    def stop(self) -> None:
        """Kill both daemons and remove every file of this instance."""
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            pid = self._pid(daemon)
            if pid is not None:
                with contextlib.suppress(OvsError):
                    kill_pid(pid)
        if self._own_workdir:
            shutil.rmtree(self.root, ignore_errors=True)

    def _pid(self, daemon: str) -> int | None:
        try:
            pid = int((self.root / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _log_tail(self, lines: int = 15) -> str:
        log = self.root / "ovs-vswitchd.log"
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- ovs-vswitchd.log ---\n" + "\n".join(tail)

    def log(self, daemon: str = "ovs-vswitchd") -> str:
        try:
            return (self.root / f"{daemon}.log").read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> OvsInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- bridges and ports ----

    def add_bridge(
        self,
        name: str,
        *,
        dpid: int,
        controller: str | None = None,
        datapath_type: str = "netdev",
        fail_mode: str = "secure",
        protocols: str = "OpenFlow13",
        max_backoff_ms: int = 1000,
    ) -> None:
        """A bridge like the driver makes one (secure, OpenFlow 1.3, in-band off)."""
        args = [
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            f"datapath_type={datapath_type}",
            f"fail_mode={fail_mode}",
            f"protocols={protocols}",
            f"other_config:datapath-id={dpid:016x}",
            "other_config:disable-in-band=true",
        ]
        if controller:
            args += [
                "--",
                "set-controller",
                name,
                controller,
                "--",
                "set",
                "controller",
                name,
                f"max_backoff={max_backoff_ms}",
            ]
        self.vsctl(*args)

    def add_internal_port(self, bridge: str, name: str, ofport: int | None = None) -> int:
        """An internal port (a tap device in the instance's namespace); its OpenFlow number."""
        args = ["add-port", bridge, name, "--", "set", "interface", name, "type=internal"]
        if ofport is not None:
            args.append(f"ofport_request={ofport}")
        self.vsctl(*args)
        return self.ofport(name)

    def add_port(self, bridge: str, name: str, ofport: int | None = None) -> int:
        args = ["add-port", bridge, name]
        if ofport is not None:
            args += ["--", "set", "interface", name, f"ofport_request={ofport}"]
        self.vsctl(*args)
        return self.ofport(name)

    def ofport(self, name: str) -> int:
        def number() -> int:
            out = self.vsctl("--if-exists", "get", "interface", name, "ofport").strip()
            return int(out) if out.lstrip("-").isdigit() and int(out) > 0 else 0

        return wait_until(number, self.timeout, f"an OpenFlow port number for {name}")

    def is_connected(self, bridge: str) -> bool:
        out = self.vsctl("--if-exists", "get", "controller", bridge, "is_connected").strip()
        return out == "true"

    def wait_connected(self, bridge: str, timeout: float | None = None) -> None:
        wait_until(
            lambda: self.is_connected(bridge),
            timeout or self.timeout,
            f"bridge {bridge} to connect to its controller",
        )

    # ---- flow tables as text ----

    def dump_flows(self, bridge: str, *extra: str) -> list[str]:
        """``dump-flows --no-stats`` lines, stripped and sorted (no header)."""
        out = self.ofctl("dump-flows", "--no-stats", bridge, *extra)
        return sorted(line.strip() for line in out.splitlines() if "actions=" in line)

    def dump_flows_stats(self, bridge: str, *extra: str) -> list[str]:
        """``dump-flows`` lines with counters and durations (no header)."""
        out = self.ofctl("dump-flows", bridge, *extra)
        return [line.strip() for line in out.splitlines() if "actions=" in line]

    def diff_flows(self, bridge: str, flows_file: Path) -> str:
        """``ovs-ofctl diff-flows``: '' when the bridge holds exactly the file's flows."""
        proc = self.run(
            "ovs-ofctl", "-O", "OpenFlow13", "diff-flows", bridge, str(flows_file), check=False
        )
        if proc.returncode not in (0, 2):
            raise OvsError(f"diff-flows {bridge}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def dump_groups(self, bridge: str) -> list[str]:
        out = self.ofctl("dump-groups", bridge)
        return sorted(
            line.strip() for line in out.splitlines() if line.strip().startswith("group_id=")
        )


@contextlib.contextmanager
def ovs_in_netns(timeout: float = DEFAULT_TIMEOUT) -> Iterator[tuple[Netns, OvsInstance]]:
    """A fresh namespace with a fresh OVS in it; both removed on exit, even on failure."""
    ns = Netns()
    ns.create()
    try:
        ovs = OvsInstance(netns=ns.name, timeout=timeout)
        try:
            ovs.start()
            yield ns, ovs
        finally:
            ovs.stop()
    finally:
        ns.delete()


def free_port(netns: Netns | None = None, host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now (in ``netns`` if given)."""
    code = f"import socket;s=socket.socket();s.bind(({host!r},0));print(s.getsockname()[1])"
    cmd: Sequence[str] = ["python3", "-c", code]
    if netns is None:
        return local_free_port(host)
    return int(netns.run(*cmd).strip())
