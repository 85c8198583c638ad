"""An isolated dockerd for integration tests.

Every instance has its own data root, exec root, pidfile, API socket and
managed containerd under one short temporary directory, and runs with
``--bridge=none --iptables=false --ip-masq=false --ip-forward=false
--userland-proxy=false``: it never touches the host's docker0, its iptables
chains or sysctls (the qingluan driver writes its own NAT rules).

Plugin discovery is isolated with a private mount namespace. A *holder*
process (``unshare --mount``) keeps the namespace alive for the instance's
whole life; in it, ``plugin_dir`` is bind-mounted over ``/run/docker/plugins``
and an empty directory over ``/etc/docker`` (hiding ``/etc/docker/plugins``,
``daemon.json`` and ``key.json``) and over ``/usr/lib/docker/plugins``.
dockerd is started in that namespace with ``nsenter``, so it finds the
test's plugin sockets and never those of a running ``make run`` stack.
Restarts reuse the namespace: with ``--live-restore`` the restarted dockerd
sees the same mounts as its containers' shims (a dockerd in a fresh mount
namespace cannot ``docker exec`` into live-restored containers).

The ``netns`` directory under the exec root is the one mount shared with the
host namespace, so the ``SandboxKey`` path Docker hands to a network driver
(``<exec root>/netns/<id>``) is a usable network namespace from the host too
(``nsenter --net=PATH``); container root filesystems stay private to the
namespace and vanish with it.

``netns="NAME"`` runs dockerd in the network namespace ``ip netns`` knows as
NAME (one "host" of a multi-host test, next to that host's OVS and driver):
its bridges and the host ends of its veths live there.

Typical use (the driver is started before dockerd and stopped after it, as on
a real host; ``cleanup()`` talks to the driver while it still runs)::

    with IsolatedDockerd() as dockerd:           # creates the directories
        driver = start_driver(plugin_dir=dockerd.plugin_dir)
        try:
            dockerd.start()
            ensure_images(dockerd)                # tests.support.image
            dockerd.docker("run", "--rm", "qingluan/busybox", "true")
            dockerd.restart(live_restore=True)
            dockerd.cleanup()                     # containers, networks, mounts, files
        finally:
            driver.stop()

Every wait is bounded. ``cleanup()`` is safe to call twice, after a failed
start and after ``kill()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from tests.support.proc import wait_until

ISOLATION_FLAGS = (
    "--bridge=none",
    "--iptables=false",
    "--ip-masq=false",
    "--ip-forward=false",
    "--userland-proxy=false",
)
DEFAULT_NETWORKS = frozenset({"bridge", "host", "none"})
BASE_PREFIX = "qld-"
# Shadowed inside the namespace: what a host dockerd would read or discover.
PLUGIN_SOCKET_DIR = Path("/run/docker/plugins")
HIDDEN_DIRS = (Path("/etc/docker"), Path("/usr/lib/docker/plugins"))

# Runs as the holder inside the new mount namespace: make every mount that is
# still shared with the host private here (except the netns directory), bind
# the test directories over the discovery paths, say "ready", then wait for
# stdin to close (the owner died or released the namespace).
_HOLDER_SCRIPT = r"""
set -eu
netns=$1 plugins=$2
awk '{ for (i = 7; $i != "-"; i++) if ($i ~ /^shared:/) { print $5; break } }' \
    /proc/self/mountinfo |
while read -r mp; do
    mp=$(printf '%b' "$mp")
    # another instance's mount may vanish meanwhile (its rig is being torn down)
    [ "$mp" = "$netns" ] || mount --make-private "$mp" 2>/dev/null || [ ! -d "$mp" ]
done
mount --bind "$plugins" /run/docker/plugins
shift 2
while [ $# -ge 2 ]; do  # pairs: an empty directory, the directory it hides
    if [ -d "$2" ]; then mount --bind "$1" "$2"; fi
    shift 2
done
echo ready
exec cat >/dev/null
"""


class DockerdError(RuntimeError):
    """dockerd did not start or stop in time, or a docker command failed."""


class DockerCommandError(DockerdError):
    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{' '.join(self.argv)} exited with {returncode}: {stderr.strip() or stdout.strip()}"
        )


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _mount_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _signal_and_wait(pids: Sequence[int], timeout: float) -> list[int]:
    """SIGKILL ``pids`` and wait (bounded) until they are gone; return survivors."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _pid_alive(p)]
    return alive


def _unescape_mount_path(field: str) -> str:
    """Decode the octal escapes (``\\040`` for a space) of /proc/*/mountinfo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Path]:
    """Mount points at or below ``path`` in a mount namespace, deepest first."""
    root = str(path.resolve())
    found = []
    for line in mountinfo.read_text().splitlines():
        point = _unescape_mount_path(line.split()[4])
        if point == root or point.startswith(root + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


class IsolatedDockerd:
    """One dockerd with its own state, socket and plugin discovery (see the module doc).

    ``base`` defaults to a new ``/tmp/qld-XXXXXX`` (short, because every unix
    socket path below it must stay under 108 bytes). Construction only creates
    directories; ``start()`` starts the daemon.
    """

    def __init__(
        self,
        base: Path | None = None,
        *,
        plugin_dir: Path | None = None,
        live_restore: bool = False,
        extra_args: Sequence[str] = (),
        start_timeout: float = 60.0,
        docker_bin: str | None = None,
        netns: str | None = None,
    ) -> None:
        if os.geteuid() != 0:
            raise DockerdError("an isolated dockerd needs root")
        for tool in ("dockerd", "unshare", "nsenter", "mount", "umount"):
            if shutil.which(tool) is None:
                raise DockerdError(f"{tool} not found: run `make deps`")
        self.base = (base or Path(tempfile.mkdtemp(prefix=BASE_PREFIX, dir="/tmp"))).resolve()
        self.exec_root = self.base / "exec"
        self.data_root = self.base / "data"
        self.netns_dir = self.exec_root / "netns"
        self.plugin_dir = (plugin_dir or self.base / "plugins").resolve()
        self.hidden_dir = self.base / "hidden"
        self.socket = self.base / "docker.sock"
        self.pidfile = self.base / "dockerd.pid"
        self.log = self.base / "dockerd.log"
        self.config_file = self.base / "daemon.json"
        self.live_restore = live_restore
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.docker_bin = docker_bin or shutil.which("docker") or "docker"
        # a network namespace (``ip netns`` name) to run in: one "host" of a multi-host test
        self.netns = netns
        self.last_start_seconds: float | None = None
        self._holder: subprocess.Popen[bytes] | None = None
        self._mnt_ns: int | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._bridges: set[str] = set()
        for d in (self.exec_root, self.data_root, self.plugin_dir):
            d.mkdir(parents=True, exist_ok=True)
        for hidden in HIDDEN_DIRS:
            self._hidden_for(hidden).mkdir(parents=True, exist_ok=True)
        self.netns_dir.mkdir(exist_ok=True)
        self.config_file.write_text("{}\n")
        (self.base / "owner").write_text(f"{os.getpid()}\n")

    # ---- addresses -------------------------------------------------------

    @property
    def host(self) -> str:
        """The ``DOCKER_HOST`` value of this daemon."""
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` with ``DOCKER_HOST`` pointing here (for subprocesses)."""
        env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONTEXT"}
        env["DOCKER_HOST"] = self.host
        return env

    @property
    def pid(self) -> int | None:
        return self._daemon.pid if self._daemon is not None else None

    @property
    def mount_ns(self) -> int | None:
        """Inode of the private mount namespace (None before the first start)."""
        return self._mnt_ns

    # ---- lifecycle -------------------------------------------------------

    def __enter__(self) -> IsolatedDockerd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def running(self) -> bool:
        return self._daemon is not None and self._daemon.poll() is None

    def start(self, timeout: float | None = None) -> None:
        """Start dockerd (in the namespace) and return once its API answers."""
        if self.running():
            return
        self._ensure_namespace()
        argv = [
            "nsenter",
            f"--mount=/proc/{self._holder_pid()}/ns/mnt",
            *([f"--net=/run/netns/{self.netns}"] if self.netns else []),
            "--",
            "dockerd",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--host={self.host}",
            f"--config-file={self.config_file}",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            *ISOLATION_FLAGS,
            *(["--live-restore"] if self.live_restore else []),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        began = time.monotonic()
        with self.log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            self._daemon = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            wait_until(self._ready, timeout or self.start_timeout, "dockerd to answer /_ping")
        except Exception as exc:
            tail = self.log_tail()
            self.stop(timeout=10)
            raise DockerdError(f"dockerd did not start: {exc}\n--- {self.log}:\n{tail}") from None
        self.last_start_seconds = time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; wait until it is gone.

        Containers keep running (in their shims) with ``live_restore``; without
        it dockerd stops them, which takes their stop timeout (busybox ``sleep``
        as PID 1 ignores SIGTERM: 10 s unless run with ``--init`` or
        ``--stop-timeout``).
        """
        if self._daemon is None:
            return
        if self._daemon.poll() is None:
            self._remember_bridges()
            self._daemon.send_signal(signal.SIGTERM)
            try:
                self._daemon.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._daemon.kill()
                self._daemon.wait(timeout=10)
        self._daemon = None

    def kill(self) -> None:
        """SIGKILL dockerd alone (a crash): containerd, shims and containers survive."""
        if self._daemon is not None and self._daemon.poll() is None:
            self._remember_bridges()
            self._daemon.kill()
            self._daemon.wait(timeout=10)
        self._daemon = None

    def restart(self, *, live_restore: bool | None = None, timeout: float = 30.0) -> None:
        """Stop (gracefully) and start again in the same namespace and data root."""
        self.stop(timeout=timeout)
        if live_restore is not None:
            self.live_restore = live_restore
        self.start()

    # ---- the docker CLI --------------------------------------------------

    def docker(
        self,
        *args: str,
        timeout: float = 60.0,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon; raise ``DockerCommandError`` on failure."""
        argv = [self.docker_bin, f"--host={self.host}", *args]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                env=self.env,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise DockerdError(f"{' '.join(argv)} timed out after {timeout:.0f}s") from exc
        if check and done.returncode != 0:
            raise DockerCommandError(argv, done.returncode, done.stdout, done.stderr)
        return done

    def inspect(self, *names: str) -> list[dict[str, object]]:
        """``docker inspect`` as parsed JSON."""
        out = self.docker("inspect", *names).stdout
        data = json.loads(out)
        assert isinstance(data, list)
        return data

    def container_pid(self, name: str) -> int:
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())

    def sandbox_key(self, name: str) -> Path:
        """The container's network namespace file (usable from the host)."""
        return Path(
            self.docker("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name).stdout.strip()
        )

    # ---- cleanup ---------------------------------------------------------

    def remove_all(self, timeout: float = 60.0) -> list[str]:
        """Remove every container and every non-default network; return the errors.

        Needs the network driver of those networks to be up (a remote driver
        that is gone makes dockerd retry for about 30 s per call).
        """
        if not self.running():
            return []
        errors: list[str] = []
        self._remember_bridges()
        containers = self.docker("ps", "-aq", timeout=timeout, check=False).stdout.split()
        if containers:
            done = self.docker("rm", "-f", "-v", *containers, timeout=timeout, check=False)
            if done.returncode != 0:
                errors.append(done.stderr.strip())
        listed = self.docker(
            "network", "ls", "--format", "{{.ID}} {{.Name}}", timeout=timeout, check=False
        ).stdout
        networks = [
            line.split()[0]
            for line in listed.splitlines()
            if line.strip() and line.split()[1] not in DEFAULT_NETWORKS
        ]
        for net in networks:
            done = self.docker("network", "rm", net, timeout=timeout, check=False)
            if done.returncode != 0:
                errors.append(done.stderr.strip())
        return errors

    def namespace_pids(self) -> list[int]:
        """Every process in the instance's mount namespace (holder, daemons, shims)."""
        if self._mnt_ns is None:
            return []
        return [p for p in _all_pids() if _mount_ns(p) == self._mnt_ns]

    def cleanup(self, timeout: float = 60.0) -> None:
        """Remove containers and networks, stop everything, unmount, delete the directory.

        Raises ``DockerdError`` if something could not be removed; a second call
        retries what is left.
        """
        # a hung daemon raises here: the kill path below still cleans up
        with contextlib.suppress(DockerdError):
            self.remove_all(timeout=timeout)
        self.stop(timeout=30)
        self._kill_namespace()
        self._delete_bridges()
        self._unmount_all()
        left = mounts_under(self.base)
        if left:
            raise DockerdError(f"mounts left under {self.base}: {left}")
        shutil.rmtree(self.base, ignore_errors=True)
        if self.base.exists():
            raise DockerdError(f"could not remove {self.base}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # ---- internals -------------------------------------------------------

    def _ready(self) -> bool:
        if self._daemon is None or self._daemon.poll() is not None:
            raise DockerdError("dockerd exited")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                reply = s.recv(1024)
        except OSError:
            return False
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]

    def _hidden_for(self, path: Path) -> Path:
        """The empty directory mounted over ``path`` in the namespace."""
        return self.hidden_dir / str(path).strip("/").replace("/", "-")

    def _holder_pid(self) -> int:
        assert self._holder is not None
        return self._holder.pid

    def _ensure_namespace(self) -> None:
        if self._holder is not None and self._holder.poll() is None:
            return
        PLUGIN_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        # The netns directory: a mount point of its own, in a new peer group
        # shared with the namespace (so Docker's netns bind mounts show here).
        if self.netns_dir not in mounts_under(self.netns_dir):
            subprocess.run(
                ["mount", "--bind", str(self.netns_dir), str(self.netns_dir)],
                check=True,
                timeout=10,
            )
        for flag in ("--make-private", "--make-shared"):
            subprocess.run(["mount", flag, str(self.netns_dir)], check=True, timeout=10)
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "unchanged",
            "--",
            "sh",
            "-c",
            _HOLDER_SCRIPT,
            "holder",
            str(self.netns_dir),
            str(self.plugin_dir),
            *(str(p) for hidden in HIDDEN_DIRS for p in (self._hidden_for(hidden), hidden)),
        ]
        holder = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._holder = holder
        assert holder.stdout is not None and holder.stderr is not None
        readable, _, _ = select.select([holder.stdout], [], [], 10.0)
        line = holder.stdout.readline() if readable else b""
        if line.strip() != b"ready":
            err = holder.stderr.read() if holder.poll() is not None else b"(no answer in 10 s)"
            self._stop_holder()
            raise DockerdError(f"could not set up the mount namespace: {err.decode().strip()}")
        self._mnt_ns = _mount_ns(holder.pid)

    def _stop_holder(self) -> None:
        holder = self._holder
        if holder is None:
            return
        if holder.stdin is not None:
            with contextlib.suppress(OSError):
                holder.stdin.close()
        try:
            holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait(timeout=5)
        for pipe in (holder.stdout, holder.stderr):
            if pipe is not None:
                pipe.close()
        self._holder = None

    def _kill_namespace(self) -> None:
        """Kill what is left in the namespace: containers first, then shims and containerd."""
        ours = [p for p in self.namespace_pids() if self._holder is None or p != self._holder.pid]
        shims = set(ours)
        # a container's init lives in a mount namespace of its own, as a child of its shim
        containers = [p for p in _all_pids() if _ppid(p) in shims and p not in shims]
        survivors = _signal_and_wait(containers, 10) + _signal_and_wait(ours, 10)
        self._stop_holder()
        if survivors:
            raise DockerdError(f"processes of {self.base} survived SIGKILL: {survivors}")

    def _remember_bridges(self) -> None:
        """Linux bridges of Docker ``bridge`` networks, to delete if dockerd cannot."""
        with contextlib.suppress(DockerdError):
            done = self.docker(
                "network",
                "ls",
                "-q",
                "--no-trunc",
                "--filter",
                "driver=bridge",
                timeout=10,
                check=False,
            )
            self._bridges.update(f"br-{net[:12]}" for net in done.stdout.split())

    def _delete_bridges(self) -> None:
        ip = ["ip", *(["-n", self.netns] if self.netns else [])]
        for dev in sorted(self._bridges):
            subprocess.run([*ip, "link", "del", dev], capture_output=True, timeout=10)
        self._bridges.clear()

    def _unmount_all(self) -> None:
        for point in mounts_under(self.base):
            done = subprocess.run(["umount", str(point)], capture_output=True, timeout=10)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=10)


@contextlib.contextmanager
def isolated_dockerd(
    *, live_restore: bool = False, plugin_dir: Path | None = None, start: bool = True
) -> Iterator[IsolatedDockerd]:
    """An ``IsolatedDockerd`` (started unless ``start=False``), cleaned up on exit."""
    dockerd = IsolatedDockerd(plugin_dir=plugin_dir, live_restore=live_restore)
    try:
        if start:
            dockerd.start()
        yield dockerd
    finally:
        dockerd.cleanup()


def sweep_stale(parent: Path = Path("/tmp")) -> list[Path]:
    """Clean up instances whose owning test process died (a killed pytest run).

    Returns the directories it removed. Live instances are left alone.
    """
    removed = []
    for base in sorted(parent.glob(BASE_PREFIX + "*")):
        try:
            owner = int((base / "owner").read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        _sweep_one(base)
        removed.append(base)
    return removed


def _sweep_one(base: Path) -> None:
    dockerd_pid = None
    with contextlib.suppress(OSError, ValueError):
        dockerd_pid = int((base / "dockerd.pid").read_text().strip())
    namespaces = set()
    if dockerd_pid is not None and _pid_alive(dockerd_pid):
        namespaces.add(_mount_ns(dockerd_pid))
    # shims and the holder mention the directory on their command line
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            if str(base).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                namespaces.add(_mount_ns(pid))
    namespaces.discard(None)
    namespaces.discard(_mount_ns(os.getpid()))
    members = [p for p in _all_pids() if _mount_ns(p) in namespaces]
    children = [p for p in _all_pids() if _ppid(p) in set(members) and p not in members]
    _signal_and_wait(children, 10)
    _signal_and_wait(members, 10)
    for point in mounts_under(base):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=10)
    if not mounts_under(base):
        shutil.rmtree(base, ignore_errors=True)
