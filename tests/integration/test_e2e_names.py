"""Docker's names in ``qingluan status``, end to end: real dockerd, real driver, real controller.

Docker never sends a remote driver the network's or the container's name; the
driver learns them afterwards from the local Docker API (qingluan/driver/learner.py)
and PATCHes the controller. See tests/support/stack.py for the rig.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.integration.conftest import create_network
from tests.support.dockerd import DockerCommandError
from tests.support.proc import wait_until
from tests.support.stack import SimHost, Stack, cli

pytestmark = pytest.mark.integration

NET = "named1"
CONTAINER = "web1"


def names_in_status(stack: Stack, network_id: str, endpoint_id: str) -> tuple[object, object]:
    status = stack.status()
    net = next((n for n in status["networks"] if n["id"] == network_id), {})
    ep = next((e for e in status["endpoints"] if e["id"] == endpoint_id), {})
    return net.get("name"), ep.get("container_name")


@pytest.fixture(scope="module")
def named(host: SimHost) -> Iterator[tuple[str, str]]:
    """(network id, endpoint id) of ``web1`` on ``named1``."""
    try:
        network_id = create_network(host, NET, "--opt", "model=nat", "--ipam-opt", "pool=nat")
        host.docker(
            "run", "-d", "--name", CONTAINER, "--network", NET, "qingluan/busybox", "sleep", "300"
        )  # fmt: skip
        endpoint_id = host.docker(
            "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{NET}").EndpointID}}}}',
            CONTAINER,
        )  # fmt: skip
        yield network_id, endpoint_id
    finally:
        with contextlib.suppress(DockerCommandError):
            host.docker("rm", "-f", CONTAINER)
        with contextlib.suppress(DockerCommandError):
            host.docker("network", "rm", NET, timeout=60)


def test_status_shows_the_docker_names(stack: Stack, named: tuple[str, str]) -> None:
    network_id, endpoint_id = named
    wait_until(
        lambda: names_in_status(stack, network_id, endpoint_id) == (NET, CONTAINER),
        20,
        "the driver to learn the network's and the container's names",
    )
    done = cli(stack, "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    networks = lines[lines.index("NETWORKS") :]
    endpoints = lines[lines.index("ENDPOINTS") :]
    assert any(line.startswith(NET) and network_id[:12] in line for line in networks)
    # the endpoint's row names its container and its network by their Docker names
    assert any(line.startswith(CONTAINER) and NET in line for line in endpoints), done.stdout


def test_a_restarted_driver_learns_the_names_again(
    stack: Stack, host: SimHost, named: tuple[str, str]
) -> None:
    network_id, endpoint_id = named
    wait_until(
        lambda: names_in_status(stack, network_id, endpoint_id) == (NET, CONTAINER),
        20,
        "names learned",
    )
    host.stop_driver()
    # names the controller holds that Docker does not (e.g. renamed while the driver was away)
    reply = stack.request("PATCH", f"/v1/networks/{network_id}", {"name": "stale"})
    assert reply.status_code == 200, reply.text
    reply = stack.request("PATCH", f"/v1/endpoints/{endpoint_id}", {"container_name": "stale"})
    assert reply.status_code == 200, reply.text
    host.start_driver()
    # no Docker call reaches the driver: its start-up pass asks Docker itself
    wait_until(
        lambda: names_in_status(stack, network_id, endpoint_id) == (NET, CONTAINER),
        30,
        "the start-up pass to learn the names again",
    )
