"""Raising ovs-vswitchd's packet-socket receive buffers: the /proc parsing, and the real
pidfd_getfd + SO_RCVBUFFORCE path on a packet socket of this test process (bound to
``lo``, root only). With ovs-vswitchd itself: tests/integration/test_host_plumbing.py."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from qingluan.driver.host.commands import HostError
from qingluan.driver.host.sockbuf import (
    PacketSocketBuffers,
    parse_packet_table,
    socket_inode,
    vswitchd_pidfile,
)

TABLE = """\
sk               RefCnt Type Proto  Iface R Rmem   User   Inode
ffff8f0e4b7c4800 3      3    0003   7     1 0      0      41213
ffff8f0e4b7c5000 3      3    0003   0     1 0      0      41200
ffff8f0e4b7c6000 3      3    0003   9     1 1536   0      41377
"""


def test_the_packet_table_gives_bound_sockets_by_inode() -> None:
    assert parse_packet_table(TABLE) == {41213: 7, 41377: 9}
    assert parse_packet_table("header only\n") == {}
    assert parse_packet_table(TABLE + "garbage line\n") == {41213: 7, 41377: 9}


def test_socket_links() -> None:
    assert socket_inode("socket:[41213]") == 41213
    assert socket_inode("pipe:[41213]") is None
    assert socket_inode("/dev/null") is None


def test_the_pidfile_lives_beside_the_database_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    assert vswitchd_pidfile("unix:/tmp/ovs1/db.sock") == Path("/tmp/ovs1/ovs-vswitchd.pid")
    monkeypatch.delenv("OVS_RUNDIR", raising=False)
    assert vswitchd_pidfile(None) == Path("/var/run/openvswitch/ovs-vswitchd.pid")
    assert vswitchd_pidfile("tcp:10.0.0.1:6640") == Path("/var/run/openvswitch/ovs-vswitchd.pid")
    monkeypatch.setenv("OVS_RUNDIR", "/run/x")
    assert vswitchd_pidfile(None) == Path("/run/x/ovs-vswitchd.pid")


def test_a_missing_vswitchd_is_named(tmp_path: Path) -> None:
    buffers = PacketSocketBuffers(tmp_path / "ovs-vswitchd.pid")
    assert buffers.raise_for([]) == 0  # nothing asked: nothing read
    with pytest.raises(HostError, match="cannot read ovs-vswitchd's pid from"):
        buffers.raise_for([1])
    with pytest.raises(ValueError, match="positive"):
        PacketSocketBuffers(tmp_path / "x", 0)


@pytest.fixture
def packet_socket() -> Iterator[socket.socket]:
    if os.geteuid() != 0:
        pytest.skip("packet sockets need root")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind(("lo", 0))
    try:
        yield sock
    finally:
        sock.close()


def test_a_socket_of_another_process_is_raised_through_a_duplicate(
    packet_socket: socket.socket, tmp_path: Path
) -> None:
    """This process plays ovs-vswitchd: its packet socket on lo is found by its inode
    and raised through pidfd_getfd; the original descriptor stays open."""
    pidfile = tmp_path / "ovs-vswitchd.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    before = packet_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    buffers = PacketSocketBuffers(pidfile, 4 << 20)
    assert buffers.raise_for([socket.if_nametoindex("lo") + 1000]) == 0  # not its interface
    assert packet_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == before
    assert buffers.raise_for([socket.if_nametoindex("lo")]) >= 1
    assert packet_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 8 << 20
    assert buffers.raise_for([socket.if_nametoindex("lo")]) == 0  # already there
    # still open and bound: only the duplicate was closed
    assert packet_socket.getsockname()[0] == "lo"


def test_the_driver_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from qingluan.cli import build_parser
    from qingluan.driver.main import config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["driver"])).ovs_rcvbuf == 4 << 20
    off = parser.parse_args(["driver", "--ovs-rcvbuf", "0"])
    assert config_from_args(off).ovs_rcvbuf == 0
    for bad, why in (("-1", "-1 is negative"), ("lots", "'lots' is not a whole number")):
        with pytest.raises(SystemExit):
            parser.parse_args(["driver", "--ovs-rcvbuf", bad])
        assert f"--ovs-rcvbuf: {why}" in capsys.readouterr().err
