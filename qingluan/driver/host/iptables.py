"""qingluan's iptables rules: computed as data, applied as a difference, own chains only.

``desired_rules(prefix, networks, endpoints)`` is a pure function of the
controller's state for this host. ``Iptables.apply`` compares it with what
the four own chains hold and rewrites only the chains that differ, in one
atomic ``iptables-restore --noflush`` transaction (a chain declaration there
replaces that chain's rules and touches nothing else), so a restarted driver
re-syncs exactly and a second apply changes nothing. Each own chain gets one
jump from its built-in chain, inserted first and checked with ``-C``. The
driver never flushes, deletes or edits any other chain.

Chains (prefix ``QINGLUAN`` by default; tests use another):

- nat ``P-POSTROUTING`` (from POSTROUTING): MASQUERADE a nat subnet out of any
  other interface; MASQUERADE DNAT'd traffic that goes back out the same
  gateway (a container reaching a published port through a host address);
  MASQUERADE loopback sources out of the gateway (``-p`` via 127.0.0.1).
- nat ``P-PREROUTING`` and ``P-OUTPUT`` (from PREROUTING/OUTPUT for
  ``--dst-type LOCAL``, so every host address incl. 127.0.0.1): DNAT of each
  published port. No docker-proxy.
- filter ``P-FORWARD`` (from FORWARD): replies and DNAT'd traffic into nat
  networks pass; nonat and ``--internal`` networks route nothing in or out;
  other routed traffic into a nat network drops (isolation between networks,
  like Docker's); egress of nat networks passes.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from qingluan import names
from qingluan.driver.host.commands import HostError, Runner
from qingluan.model import Endpoint, Network, PortMapping
from qingluan.modes import is_isolated, is_natted

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "QINGLUAN"
NAT, FILTER = "nat", "filter"
WAIT = ["-w", "10"]

Rule = tuple[str, ...]
ChainKey = tuple[str, str]  # (table, chain)
RuleSet = dict[ChainKey, list[Rule]]

_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")
_TOKEN = re.compile(r'^[^\s"\']+$')


@dataclass(frozen=True)
class Jump:
    table: str
    builtin: str
    match: Rule
    target: str

    def spec(self) -> list[str]:
        return [*self.match, "-j", self.target]


@dataclass(frozen=True)
class Chains:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"iptables chain prefix {self.prefix!r}: use A-Z, 0-9, _ (≤16)")

    @property
    def postrouting(self) -> ChainKey:
        return (NAT, f"{self.prefix}-POSTROUTING")

    @property
    def prerouting(self) -> ChainKey:
        return (NAT, f"{self.prefix}-PREROUTING")

    @property
    def output(self) -> ChainKey:
        return (NAT, f"{self.prefix}-OUTPUT")

    @property
    def forward(self) -> ChainKey:
        return (FILTER, f"{self.prefix}-FORWARD")

    @property
    def input(self) -> ChainKey:
        return (FILTER, f"{self.prefix}-INPUT")

    def all(self) -> list[ChainKey]:
        return [self.postrouting, self.prerouting, self.output, self.forward, self.input]

    def jumps(self) -> list[Jump]:
        local = ("-m", "addrtype", "--dst-type", "LOCAL")
        return [
            Jump(NAT, "PREROUTING", local, self.prerouting[1]),
            Jump(NAT, "OUTPUT", local, self.output[1]),
            Jump(NAT, "POSTROUTING", (), self.postrouting[1]),
            Jump(FILTER, "FORWARD", (), self.forward[1]),
            Jump(FILTER, "INPUT", (), self.input[1]),
        ]


def _rule(match: str, comment: Rule, target: str) -> Rule:
    """``-s 10.0.0.0/24 ! -o qlg…`` + comment + ``-j MASQUERADE`` as tokens, in the
    order ``iptables -S`` prints them (so current and desired compare equal)."""
    return (*match.split(), *comment, *target.split())


def _comment(kind: str, docker_id: str) -> Rule:
    return ("-m", "comment", "--comment", f"qingluan-{kind}={docker_id[:12]}")


def _masquerade(n: Network) -> list[Rule]:
    gw, subnet, c = (
        names.gateway_dev(n.id),
        ipaddress.IPv4Network(n.subnet),
        _comment("network", n.id),
    )
    return [
        _rule(f"-s {subnet} ! -o {gw}", c, "-j MASQUERADE"),  # egress
        _rule(f"-s {subnet} -o {gw} -m conntrack --ctstate DNAT", c, "-j MASQUERADE"),  # hairpin
        _rule(f"-s 127.0.0.0/8 -o {gw}", c, "-j MASQUERADE"),  # -p reached via 127.0.0.1
    ]


def _dnat(ep: Endpoint, m: PortMapping) -> Rule:
    dst = f"-d {m.host_ip}/32 " if m.host_ip else ""
    ports = str(m.host_port)
    if m.host_port_end != m.host_port:
        ports += f":{m.host_port_end}"
    proto = m.proto.value
    return _rule(
        f"{dst}-p {proto} -m {proto} --dport {ports}",
        _comment("endpoint", ep.id),
        f"-j DNAT --to-destination {ep.address}:{m.container_port}",
    )


def _forward(nat: Sequence[Network], isolated: Sequence[Network]) -> list[Rule]:
    """Order matters: replies and DNAT'd traffic first, then the drops, then egress."""
    out: list[Rule] = []
    for n in nat:
        gw, c = names.gateway_dev(n.id), _comment("network", n.id)
        out.append(_rule(f"-o {gw} -m conntrack --ctstate RELATED,ESTABLISHED", c, "-j ACCEPT"))
        out.append(_rule(f"-o {gw} -m conntrack --ctstate DNAT", c, "-j ACCEPT"))
    for n in isolated:
        gw, c = names.gateway_dev(n.id), _comment("network", n.id)
        out.append(_rule(f"-i {gw}", c, "-j DROP"))
        out.append(_rule(f"-o {gw}", c, "-j DROP"))
    for n in nat:  # nothing else routed into a nat network (other networks, the LAN)
        out.append(_rule(f"-o {names.gateway_dev(n.id)}", _comment("network", n.id), "-j DROP"))
    for n in nat:
        out.append(_rule(f"-i {names.gateway_dev(n.id)}", _comment("network", n.id), "-j ACCEPT"))
    return out


# Publishing on 127.0.0.1 needs route_localnet on qingluan's devices, which would
# also let a container address the host's loopback services directly. Only
# connections that a published port DNATed (or their replies) may reach
# 127.0.0.0/8 from a qingluan device (the kube-proxy CVE-2020-8558 guard).
LOCALHOST_GUARD: Rule = (
    # in the order `iptables -S` prints it, so that an unchanged chain compares equal
    "!", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", "-i", f"{names.PREFIX}+",
    "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
    "-m", "comment", "--comment", "qingluan-localhost-guard", "-j", "DROP",
)  # fmt: skip


def desired_rules(
    prefix: str, networks: Sequence[Network], endpoints: Sequence[Endpoint]
) -> RuleSet:
    """Every rule of qingluan's chains for these networks and endpoints, in order."""
    chains = Chains(prefix)
    nets = sorted(networks, key=lambda n: n.id)
    nat = [n for n in nets if is_natted(n)]
    nat_ids = {n.id for n in nat}
    dnat = [
        _dnat(ep, m)
        for ep in sorted(endpoints, key=lambda e: e.id)
        if ep.network_id in nat_ids
        for m in ep.port_mappings
    ]
    return {
        chains.postrouting: [r for n in nat for r in _masquerade(n)],
        chains.prerouting: dnat,
        chains.output: list(dnat),
        chains.forward: _forward(nat, [n for n in nets if is_isolated(n)]),
        chains.input: [LOCALHOST_GUARD] if nat else [],
    }


def restore_text(changes: RuleSet) -> str:
    """``iptables-restore --noflush`` input that replaces exactly these chains."""
    lines: list[str] = []
    for table in (NAT, FILTER):
        keys = [k for k in changes if k[0] == table]
        if not keys:
            continue
        lines.append(f"*{table}")
        lines += [f":{chain} - [0:0]" for _, chain in keys]
        for key in keys:
            for rule in changes[key]:
                bad = [t for t in rule if not _TOKEN.match(t)]
                if bad:
                    raise ValueError(f"iptables token {bad[0]!r} would need quoting")
                lines.append(" ".join(["-A", key[1], *rule]))
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class Iptables:
    def __init__(self, runner: Runner, prefix: str = DEFAULT_PREFIX) -> None:
        self._runner = runner
        self.chains = Chains(prefix)

    @property
    def prefix(self) -> str:
        return self.chains.prefix

    def _iptables(self, table: str, *args: str, check: bool = True) -> tuple[int, str, str]:
        done = self._runner.run(["iptables", *WAIT, "-t", table, *args], check=check)
        return done.returncode, done.stdout, done.stderr

    def read(self) -> RuleSet:
        """The rules of the own chains that exist now."""
        ours = set(self.chains.all())
        current: RuleSet = {}
        for table in (NAT, FILTER):
            _, out, _ = self._iptables(table, "-S")
            for line in out.splitlines():
                words = shlex.split(line)
                if len(words) >= 2 and words[0] in ("-N", "-A") and (table, words[1]) in ours:
                    rules = current.setdefault((table, words[1]), [])
                    if words[0] == "-A":
                        rules.append(tuple(words[2:]))
        return current

    def apply(self, desired: RuleSet) -> bool:
        """Make the own chains equal ``desired`` and their jumps present; True if changed."""
        current = self.read()
        changes = {
            key: desired.get(key, [])
            for key in self.chains.all()
            if current.get(key) != desired.get(key, [])
        }
        if changes:
            log.info("iptables: rewriting %s", ", ".join(f"{t}/{c}" for t, c in changes))
            self._runner.run(["iptables-restore", *WAIT, "--noflush"], input=restore_text(changes))
        added = self._ensure_jumps()
        return bool(changes) or added

    def _ensure_jumps(self) -> bool:
        added = False
        for jump in self.chains.jumps():
            rc, _, err = self._iptables(jump.table, "-C", jump.builtin, *jump.spec(), check=False)
            if rc == 0:
                continue
            if rc != 1:
                raise HostError(f"iptables -t {jump.table} -C {jump.builtin}: {err.strip()}")
            self._iptables(jump.table, "-I", jump.builtin, "1", *jump.spec())
            added = True
        return added

    def remove(self) -> None:
        """Remove the jumps and the own chains (uninstall, tests)."""
        for jump in self.chains.jumps():
            for _ in range(100):
                rc, _, _ = self._iptables(jump.table, "-D", jump.builtin, *jump.spec(), check=False)
                if rc != 0:
                    break
        existing = self.read()
        for key in self.chains.all():
            if key in existing:
                self._iptables(key[0], "-F", key[1])
                self._iptables(key[0], "-X", key[1])
