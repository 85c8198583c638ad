"""Running host commands (ovs-vsctl, iptables, ethtool, sysctl), optionally in a netns.

A driver normally manages the root network namespace. ``netns`` lets one
machine simulate several hosts (one driver per namespace, each with its own
OVS) and lets the integration tests work in a namespace of their own, where
even iptables is private.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

from qingluan.errors import QingluanError

log = logging.getLogger(__name__)


class HostError(QingluanError):
    """A host operation failed; the message says which and why."""

    status = 500
    code = "host"


class Runner:
    def __init__(self, netns: str | None = None, timeout: float = 30.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def argv(self, cmd: Sequence[str]) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, *cmd]

    def run(
        self,
        cmd: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd``; with ``check``, a non-zero exit raises ``HostError`` with stderr."""
        argv = self.argv(cmd)
        log.debug("run %s", " ".join(argv))
        try:
            done = subprocess.run(
                argv,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise HostError(f"{cmd[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise HostError(
                f"{' '.join(cmd)} did not finish in {timeout or self.timeout} s"
            ) from None
        if check and done.returncode != 0:
            detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            log.debug("%s failed: %s", " ".join(argv), detail)
            tool = cmd[0]
            raise HostError(detail if detail.startswith(f"{tool}:") else f"{tool}: {detail}")
        return done
