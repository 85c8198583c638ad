"""docker-compose.yml and Dockerfile: the container deployment, checked without Docker.

No base image can be pulled on the build machines, so the deployment is checked
as data: the properties the driver needs on a host (host network, privileges,
the host's pid namespace, the mounts) and commands the real CLI accepts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from qingluan.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return dict(data["services"])


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target -> (source, mode) from the short volume syntax ``src:dst[:mode]``."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def _parse(service: dict[str, Any]) -> argparse.Namespace:
    command = service["command"]
    assert isinstance(command, list), "use the exec form: no shell in between"
    return build_parser().parse_args(command)


def test_both_services_run_the_image_built_from_the_repository(
    services: dict[str, Any],
) -> None:
    # plus the monitoring services (tests/unit/test_monitoring_deploy.py)
    assert set(services) == {"controller", "driver", "prometheus", "grafana"}
    for service in (services["controller"], services["driver"]):
        assert service["build"] == "."
        assert service["image"] == "qingluan:latest"
        assert service["restart"] == "unless-stopped"


def test_controller_publishes_openflow_and_the_api_on_loopback_only(
    services: dict[str, Any],
) -> None:
    controller = services["controller"]
    assert "6653:6653" in controller["ports"]
    assert "127.0.0.1:6680:6680" in controller["ports"]
    assert not any(
        p.endswith(":6680") and not p.startswith("127.0.0.1:") for p in controller["ports"]
    )
    args = _parse(controller)
    assert args.command == "controller"
    # reachable through the published port: listens on every address of its container
    assert args.api_host == "0.0.0.0" and args.api_port == 6680
    assert args.openflow_port == 6653


def test_controller_keeps_its_state_in_a_volume(services: dict[str, Any]) -> None:
    args = _parse(services["controller"])
    volumes = mounts(services["controller"])
    assert str(args.state_dir) in volumes
    assert volumes[str(args.state_dir)][1] == "rw"


def test_driver_works_on_the_host(services: dict[str, Any]) -> None:
    driver = services["driver"]
    assert driver["network_mode"] == "host"
    assert driver["privileged"] is True
    assert driver["pid"] == "host"
    assert "ports" not in driver  # host network: nothing to publish
    deps = driver["depends_on"]
    assert "controller" in (deps if isinstance(deps, list) else list(deps))


def test_driver_mounts_what_it_needs(services: dict[str, Any]) -> None:
    driver = services["driver"]
    volumes = mounts(driver)
    assert volumes["/run/docker/plugins"] == ("/run/docker/plugins", "rw")
    assert volumes["/var/run/openvswitch"] == ("/var/run/openvswitch", "rw")
    assert volumes["/var/lib/qingluan"] == ("/var/lib/qingluan", "ro")
    assert volumes["/lib/modules"] == ("/lib/modules", "ro")
    args = _parse(driver)
    assert args.command == "driver"
    # the sockets land where dockerd looks, the token is the controller's (same host path)
    assert str(args.plugin_dir) == "/run/docker/plugins"
    assert args.token_file.parent == Path("/var/lib/qingluan")
    controller_state = mounts(services["controller"])[str(_parse(services["controller"]).state_dir)]
    assert controller_state[0] == volumes["/var/lib/qingluan"][0]
    assert args.controller == "http://127.0.0.1:6680"


def test_dockerfile_installs_the_repository_on_python_311_slim() -> None:
    lines = [
        line.strip()
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    text = "\n".join(lines)
    assert "pip install --no-cache-dir -r requirements.txt" in text
    assert "pip install --no-cache-dir --no-deps ." in text
    assert 'ENTRYPOINT ["qingluan"]' in text
    # what it copies exists in the build context
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    # the driver's host tools
    for package in ("openvswitch-switch", "iptables", "iproute2", "ethtool"):
        assert package in text
