"""Running Suricata on the mirror port: configure, verify, start, restart with backoff, stop.

Suricata only reads a mirror port, so whether it runs never changes what the
bridge forwards: a Suricata that fails to start or keeps dying is logged and
retried (0.5 s doubling to 10 s between attempts), never an error for
networking. The one error :meth:`SuricataSupervisor.start` raises is a
configuration Suricata rejects (``suricata -T``): a bad or missing rule file.

Everything Suricata writes (its ``suricata.yaml``, pid file, ``suricata.log``)
lives in the supervisor's private run directory. Its console output is read
line by line into the driver's log; "Engine started" makes :meth:`ready` true.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from qingluan.driver.ids.config import (
    FALLBACK_CLASSIFICATION,
    debian_config_file,
    render_suricata_yaml,
    validate_interface,
    validate_socket_path,
)
from qingluan.errors import QingluanError

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.5
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0  # s: a run this long resets the backoff
STOP_TIMEOUT = 5.0  # s: SIGTERM, then SIGKILL
CONFTEST_TIMEOUT = 120.0  # s: large rule sets take a while to load
LOG_ROTATE_SIZE = 1 << 20  # suricata.log is moved to suricata.log.1 at a start beyond this
READY_MARK = "Engine started"
INSTALL_HINT = "run scripts/install-suricata"

_LOG_LINE = re.compile(r"^<(?P<level>[A-Za-z]+)>\s*(?P<text>.*)$")
_LEVELS = {
    "emergency": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "notice": logging.INFO,
    "info": logging.INFO,
    "perf": logging.DEBUG,
    "config": logging.DEBUG,
    "debug": logging.DEBUG,
}
_RULE_FILE_IN_ERROR = re.compile(r"from file (?P<file>\S+) at line (?P<line>\d+)")


class IdsError(QingluanError):
    """The IDS cannot run as configured (Suricata missing, rules rejected)."""

    status = 500
    code = "ids"


def conftest_error(output: str, rule_files: Sequence[Path]) -> str:
    """A one-paragraph reason from ``suricata -T`` output, naming the offending rule file."""
    errors: list[str] = []
    culprits: list[str] = []
    for raw in output.splitlines():
        m = _LOG_LINE.match(raw.strip())
        if m is None:
            continue
        level, text = m.group("level").lower(), m.group("text")
        if level in ("error", "critical", "alert", "emergency") or "No rule files match" in text:
            errors.append(text)
        hit = _RULE_FILE_IN_ERROR.search(text)
        if hit is not None:
            culprits.append(f"{hit.group('file')} line {hit.group('line')}")
    where = ", ".join(dict.fromkeys(culprits)) or ", ".join(str(p) for p in rule_files)
    detail = "; ".join(errors[:6]) or (output.strip().splitlines() or ["no output"])[-1]
    return f"Suricata rejected the IDS rules ({where}): {detail}"


class SuricataSupervisor:
    """One Suricata process capturing ``interface`` (AF_PACKET), EVE alerts to ``socket_path``.

    The EVE listener must be listening on ``socket_path`` before :meth:`start`
    (Suricata connects to it). With ``netns`` Suricata runs as
    ``ip netns exec NETNS suricata ...``; the socket path is shared all the same.
    """

    def __init__(
        self,
        interface: str,
        socket_path: Path,
        run_dir: Path,
        rule_files: Sequence[Path],
        netns: str | None = None,
        binary: str = "suricata",
        *,
        classification_file: Path | None = None,
        reference_file: Path | None = None,
        min_backoff: float = MIN_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.interface = validate_interface(interface)
        self.socket_path = validate_socket_path(Path(socket_path))
        self.run_dir = Path(run_dir).absolute()
        self.rule_files = [Path(p).absolute() for p in rule_files]
        if not self.rule_files:
            raise ValueError("the IDS needs at least one rule file")
        self.netns = netns
        self.binary = binary
        self.classification_file = classification_file
        self.reference_file = reference_file
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stop_timeout = stop_timeout
        self.config_path = self.run_dir / "suricata.yaml"
        self.pidfile = self.run_dir / "suricata.pid"
        self.starts = 0  # processes started
        self.last_exit: int | None = None  # exit status of the last process that ended
        self._verified = False
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._generation = 0
        self._started_at = 0.0
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._monitor: threading.Thread | None = None
        self._readers: list[threading.Thread] = []
        self._tail: collections.deque[str] = collections.deque(maxlen=40)

    # -- public -----------------------------------------------------------------------

    def start(self) -> None:
        """Write the config, check it with ``suricata -T`` (first start only), start Suricata.

        Raises :class:`IdsError` when Suricata is not installed or rejects the rules.
        """
        with self._lock:
            if self._closing.is_set():
                raise IdsError("the Suricata supervisor is closed")
            if self._proc is not None:
                return
            self._write_config()
            verify = not self._verified
        if verify:
            self._conftest()  # without the lock: close() must not wait for a slow rule load
        with self._lock:
            if self._closing.is_set():
                raise IdsError("the Suricata supervisor is closed")
            if self._proc is not None:
                return
            self._verified = True
            self._reap_orphan()
            self._spawn()
            if self._monitor is None:
                self._monitor = threading.Thread(
                    target=self._watch, name="suricata-monitor", daemon=True
                )
                self._monitor.start()

    def running(self) -> bool:
        proc = self._proc  # no lock: callers never wait for a restart or a stop
        return proc is not None and proc.poll() is None

    def ready(self) -> bool:
        """Suricata runs and has said "Engine started" (it captures and sends EVE records)."""
        return self._ready.is_set() and self.running()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._closing.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return self.ready()
            if self._ready.wait(min(left, 0.2)) and self.running():
                return True
        return False

    @property
    def pid(self) -> int | None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        return proc.pid

    def recent_output(self) -> list[str]:
        """The last lines Suricata printed (for error messages and tests)."""
        return list(self._tail)

    def restart(self) -> None:
        """Stop the running Suricata (TERM, then KILL) and start a new one right away."""
        with self._lock:
            if self._closing.is_set():
                raise IdsError("the Suricata supervisor is closed")
            proc = self._proc
            if proc is not None:
                self._stop(proc)
            # on failure the stopped process stays the current one: the monitor retries
            self._write_config()
            self._spawn()

    def close(self) -> None:
        """Stop Suricata (bounded: TERM, ``stop_timeout``, KILL) and the threads. Idempotent."""
        self._closing.set()
        with self._lock:
            proc = self._proc
            if proc is not None:
                self._stop(proc)
            self.pidfile.unlink(missing_ok=True)
        for thread in [self._monitor, *self._readers]:
            if thread is not None and thread is not threading.current_thread():
                thread.join(2.0)
        self._readers = [t for t in self._readers if t.is_alive()]

    def __enter__(self) -> SuricataSupervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- configuration ----------------------------------------------------------------

    def _write_config(self) -> None:
        for path in self.rule_files:
            if not path.is_file():
                raise IdsError(f"IDS rule file {path} does not exist or is not a file")
            if not os.access(path, os.R_OK):
                raise IdsError(f"IDS rule file {path} is not readable")
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        classification = self.classification_file or debian_config_file("classification.config")
        if classification is None:
            classification = self.run_dir / "classification.config"
            _write_private(classification, FALLBACK_CLASSIFICATION)
        reference = self.reference_file or debian_config_file("reference.config")
        if reference is None:
            reference = self.run_dir / "reference.config"
            _write_private(reference, "")
        threshold = self.run_dir / "threshold.config"
        if not threshold.exists():
            _write_private(threshold, "")
        text = render_suricata_yaml(
            interface=self.interface,
            socket_path=self.socket_path,
            log_dir=self.run_dir,
            rule_path=self.run_dir,
            rule_files=[str(p) for p in self.rule_files],
            classification_file=classification,
            reference_file=reference,
            threshold_file=threshold,
        )
        _write_private(self.config_path, text)

    def _argv(self, *args: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, self.binary, *args]

    def _conftest(self) -> None:
        argv = self._argv("-T", "-c", str(self.config_path))
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CONFTEST_TIMEOUT,
                env=_environment(),
                check=False,
            )
        except FileNotFoundError:
            raise IdsError(f"{self.binary} is not installed: {INSTALL_HINT}") from None
        except subprocess.TimeoutExpired:
            raise IdsError(
                f"suricata -T -c {self.config_path} did not finish in {CONFTEST_TIMEOUT:.0f} s"
            ) from None
        output = f"{done.stdout}\n{done.stderr}"
        if done.returncode == 0:
            return
        if self.netns and "exec of" in output and "No such file" in output:
            # ip netns exec could not find the binary
            raise IdsError(f"{self.binary} is not installed: {INSTALL_HINT}")
        if self.netns and "Cannot open network namespace" in output:
            raise IdsError(f"network namespace {self.netns} does not exist")
        raise IdsError(conftest_error(output, self.rule_files))

    # -- processes ----------------------------------------------------------------------

    def _reap_orphan(self) -> None:
        """A Suricata left running by an earlier driver on this run directory: stop it."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            self.pidfile.unlink(missing_ok=True)
            return
        if os.fsencode(self.config_path) not in cmdline:
            self.pidfile.unlink(missing_ok=True)  # a recycled pid: not ours
            return
        log.warning("stopping Suricata pid %d left over from an earlier run", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)

    def _rotate_log(self) -> None:
        current = self.run_dir / "suricata.log"
        with contextlib.suppress(OSError):
            if current.stat().st_size > LOG_ROTATE_SIZE:
                os.replace(current, current.with_name("suricata.log.1"))

    def _spawn(self) -> None:
        """Start one Suricata (the lock is held). Raises IdsError if it cannot be executed."""
        self.pidfile.unlink(missing_ok=True)  # a stale one makes Suricata refuse to start
        self._rotate_log()
        argv = self._argv(
            "-c",
            str(self.config_path),
            f"--af-packet={self.interface}",
            "--pidfile",
            str(self.pidfile),
        )
        self._generation += 1
        generation = self._generation
        self._ready.clear()
        self._started_at = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=_environment(),
                start_new_session=True,  # the driver's terminal signals are not Suricata's
                close_fds=True,
            )
        except FileNotFoundError:
            raise IdsError(f"{argv[0]} is not installed: {INSTALL_HINT}") from None
        except OSError as exc:
            raise IdsError(f"cannot start Suricata: {exc}") from None
        self._proc = proc
        self.starts += 1
        log.info(
            "Suricata started on %s%s (pid %d)",
            self.interface,
            f" in netns {self.netns}" if self.netns else "",
            proc.pid,
        )
        assert proc.stdout is not None
        reader = threading.Thread(
            target=self._read_output,
            args=(proc.stdout, generation),
            name=f"suricata-output-{generation}",
            daemon=True,
        )
        self._readers = [t for t in self._readers if t.is_alive()]
        self._readers.append(reader)
        reader.start()

    def _read_output(self, stream: IO[bytes], generation: int) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                if not line:
                    continue
                self._tail.append(line)
                m = _LOG_LINE.match(line)
                level = _LEVELS.get(m.group("level").lower(), logging.INFO) if m else logging.INFO
                log.log(level, "suricata: %s", m.group("text") if m else line)
                if READY_MARK in line and generation == self._generation:
                    self._ready.set()

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "Suricata pid %d ignored SIGTERM for %.1f s: killing it",
                    proc.pid,
                    self.stop_timeout,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(2.0)
        self._ready.clear()
        self.last_exit = proc.returncode

    def _watch(self) -> None:
        """Restart Suricata whenever it exits on its own, with backoff."""
        backoff = self.min_backoff
        while not self._closing.is_set():
            with self._lock:
                proc = self._proc
            if proc is None:
                if self._closing.wait(0.2):
                    return
                continue
            try:
                proc.wait(1.0)
            except subprocess.TimeoutExpired:
                continue
            with self._lock:
                if self._closing.is_set():
                    return
                if self._proc is not proc:
                    continue  # restart() replaced it
                self.last_exit = proc.returncode
                self._ready.clear()
                lived = time.monotonic() - self._started_at
            if lived >= STABLE_AFTER:
                backoff = self.min_backoff
            tail = " | ".join(list(self._tail)[-3:])
            log.warning(
                "Suricata pid %d exited with status %s after %.1f s; restarting in %.1f s%s",
                proc.pid,
                proc.returncode,
                lived,
                backoff,
                f" (last output: {tail})" if tail else "",
            )
            if self._closing.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff)
            with self._lock:
                if self._closing.is_set():
                    return
                if self._proc is not proc:
                    continue
                try:
                    self._write_config()
                    self._spawn()
                except IdsError as exc:
                    # keep the dead process as the current one: the next round retries
                    self._started_at = time.monotonic()
                    log.error("cannot restart Suricata: %s", exc)


def _environment() -> dict[str, str]:
    # SC_LOG_* would override the log format the output reader parses
    return {k: v for k, v in os.environ.items() if not k.startswith("SC_LOG_")}


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
