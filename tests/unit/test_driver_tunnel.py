"""The driver's underlay flags: parsed and refused before anything is touched."""

from __future__ import annotations

import argparse

import pytest

from qingluan.driver.host.tunnel import parse_underlay_address
from qingluan.driver.main import config_from_args


def test_underlay_address_keeps_its_prefix_and_registers_the_ip() -> None:
    assert str(parse_underlay_address(" 172.31.0.11/24 ")) == "172.31.0.11/24"
    args = argparse.Namespace(underlay_address="172.31.0.11/24", underlay_nic="eth2")
    cfg = config_from_args(args)
    assert (cfg.underlay_address, cfg.underlay_nic) == ("172.31.0.11/24", "eth2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("172.31.0.11", "give the prefix length"),
        ("172.31.0.0/24", "not a host address of 172.31.0.0/24"),
        ("172.31.0.255/24", "not a host address"),
        ("127.0.0.2/8", "not a unicast host address"),
        ("eth2", "is not an IPv4 address with a prefix length"),
        ("172.31.0.300/24", "is not an IPv4 address"),
    ],
)
def test_bad_underlay_addresses_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_underlay_address(text)
    with pytest.raises(SystemExit, match=message):
        config_from_args(argparse.Namespace(underlay_address=text))
