"""Bad input: the message Docker shows, and nothing changed anywhere.

"Anywhere" is Docker's networks and containers, the host's devices, OVS
ports, flows and iptables, and the controller's networks, pools and
endpoints: compared before and after every refused command.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import create_network, run_sleeper
from tests.support.stack import QL, SimHost, Stack

pytestmark = pytest.mark.integration


def snapshot(host: SimHost, stack: Stack) -> dict[str, object]:
    assert host.ovs is not None
    status = stack.status()
    return {
        "docker networks": sorted(host.docker("network", "ls", "-q", "--no-trunc").split()),
        "containers": sorted(host.docker("ps", "-aq", "--no-trunc").split()),
        "links": sorted(n for n in host.links() if n.startswith("ql")),
        "ports": sorted(host.ovs.vsctl("list-ports", "br-ql").split()),
        "flows": sorted(host.ofctl("dump-flows", "br-ql", "--no-stats").splitlines()),
        "iptables": sorted(
            line
            for table in ("nat", "filter")
            for line in host.sh("iptables-save", "-t", table).splitlines()
            if "QINGLUAN" in line
        ),
        "controller": (
            sorted(n["id"] for n in status["networks"]),
            sorted(p["id"] for p in status["pools"]),
            sorted(e["id"] for e in status["endpoints"]),
        ),
    }


@contextlib.contextmanager
def nothing_changes(host: SimHost, stack: Stack) -> Iterator[None]:
    before = snapshot(host, stack)
    yield
    after = snapshot(host, stack)
    for key in before:
        assert after[key] == before[key], f"{key} changed"


@pytest.fixture(scope="module")
def existing(host: SimHost) -> Iterator[str]:
    """One network with a container at 192.168.80.10 and a tiny network (/30)."""
    create_network(
        host, "errs", "--opt", "model=nat", "--ipam-opt", "pool=nat",
        "--subnet", "192.168.80.0/24",
    )  # fmt: skip
    run_sleeper(host, "errs-a", "errs", "--ip", "192.168.80.10")
    create_network(
        host, "tiny", "--opt", "model=nonat", "--ipam-opt", "pool=nonat",
        "--subnet", "192.168.81.0/30",
    )  # fmt: skip
    run_sleeper(host, "tiny-a", "tiny")  # .1 is the gateway, .2 the only host address left
    try:
        yield "errs"
    finally:
        host.docker("rm", "-f", "errs-a", "tiny-a", "errs-b", "tiny-b")
        host.docker("network", "rm", "errs", "tiny")


CREATE_CASES = {
    "unknown model": (
        ("--opt", "model=bogus", "--ipam-opt", "pool=nat"),
        ("unknown network model 'bogus'", "nonat, nat"),
    ),
    "unknown pool": (
        ("--opt", "model=nat", "--ipam-opt", "pool=nope"),
        ("nope", "nat"),
    ),
    "gateway outside the subnet": (
        ("--opt", "model=nat", "--ipam-opt", "pool=nat",
         "--subnet", "192.168.90.0/24", "--gateway", "192.168.91.1"),
        # docker's own CLI refuses this one before qingluan is asked (unit-tested there)
        ("no matching subnet for gateway 192.168.91.1",),
    ),
    "subnet overlapping another qingluan network": (
        ("--opt", "model=nat", "--ipam-opt", "pool=nat", "--subnet", "192.168.80.0/25"),
        ("overlaps", "192.168.80.0/24"),
    ),
    "the same subnet as another qingluan network": (
        ("--opt", "model=nonat", "--ipam-opt", "pool=nat", "--subnet", "192.168.80.0/24"),
        ("overlaps network",),
    ),
    "vlan id that is not a number": (
        ("--opt", "model=vlan", "--opt", "vni=abc", "--ipam-opt", "pool=vlan"),
        ("vni", "abc"),
    ),
    "vlan id 4095": (
        ("--opt", "model=vlan", "--opt", "vni=4095", "--ipam-opt", "pool=vlan",
         "--subnet", "192.168.92.0/24"),
        ("4095", "1-4094"),
    ),
    "vlan id 0": (
        ("--opt", "model=vlan", "--opt", "vni=0", "--ipam-opt", "pool=vlan",
         "--subnet", "192.168.92.0/24"),
        ("1-4094",),
    ),
    "vni on a nat network": (
        ("--opt", "model=nat", "--opt", "vni=7", "--ipam-opt", "pool=nat"),
        ("vni",),
    ),
    "mtu that is not a number": (
        ("--opt", "model=nat", "--opt", "com.docker.network.driver.mtu=big",
         "--ipam-opt", "pool=nat"),
        ("mtu", "big"),
    ),
    "ipv6": (
        ("--opt", "model=nat", "--ipam-opt", "pool=nat", "--ipv6",
         "--subnet", "fd00:1::/64"),
        ("IPv6",),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CREATE_CASES))
def test_bad_network_create_is_refused_with_a_clear_message_and_changes_nothing(
    host: SimHost, stack: Stack, existing: str, case: str
) -> None:
    opts, expected = CREATE_CASES[case]
    with nothing_changes(host, stack):
        err = host.docker_fails("network", "create", *QL, *opts, "badnet")
    if case != "gateway outside the subnet":
        assert "Error response from daemon" in err
    for text in expected:
        assert text in err, f"{case}: {text!r} not in {err!r}"


def test_address_already_taken_is_refused(host: SimHost, stack: Stack, existing: str) -> None:
    with nothing_changes(host, stack):
        err = host.docker_fails(
            "run", "-d", "--name", "errs-b", "--network", "errs", "--ip", "192.168.80.10",
            "qingluan/busybox", "sleep", "60",
        )  # fmt: skip
        host.docker("rm", "-f", "errs-b")
    assert "192.168.80.10" in err and "in use" in err


def test_address_outside_the_subnet_is_refused(host: SimHost, stack: Stack, existing: str) -> None:
    with nothing_changes(host, stack):
        err = host.docker_fails(
            "run", "-d", "--name", "errs-b", "--network", "errs", "--ip", "10.99.0.5",
            "qingluan/busybox", "sleep", "60",
        )  # fmt: skip
        host.docker("rm", "-f", "errs-b")
    assert "10.99.0.5" in err or "no configured subnet" in err


def test_exhausted_pool_is_refused(host: SimHost, stack: Stack, existing: str) -> None:
    with nothing_changes(host, stack):
        err = host.docker_fails(
            "run", "-d", "--name", "tiny-b", "--network", "tiny", "qingluan/busybox", "sleep", "60"
        )
        host.docker("rm", "-f", "tiny-b")
    assert "192.168.81.0/30" in err and ("exhausted" in err or "no free" in err), err


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_rest_calls_with_a_wrong_token_are_refused_and_change_nothing(
    host: SimHost, stack: Stack, existing: str, token: str
) -> None:
    with nothing_changes(host, stack):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for method, path, body in (
            ("POST", "/v1/ipam/pools", {"pool": "nat"}),
            ("DELETE", f"/v1/hosts/{host.name}", None),
            ("PUT", "/v1/networks/abc", {"host": host.name, "model": "nat", "pool_id": "x"}),
        ):
            reply = httpx.request(
                method, stack.api_url + path, json=body, headers=headers, timeout=10
            )
            assert reply.status_code == 401, (method, path, reply.text)
            assert reply.json()["code"] == "unauthorized"


def test_rest_validation_errors_name_the_field(host: SimHost, stack: Stack, existing: str) -> None:
    with nothing_changes(host, stack):
        reply = stack.request(
            "PUT", "/v1/networks/abc",
            {"host": host.name, "model": "vlan", "vni": 4095, "pool_id": "x"},
        )  # fmt: skip
    assert reply.status_code == 422
    assert "vni" in reply.json()["error"] and "4095" in reply.json()["error"]
