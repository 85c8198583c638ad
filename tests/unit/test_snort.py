"""Snort alert_unixsock datagrams, built byte by byte to x86-64 Snort 2.9's layout."""

from __future__ import annotations

import struct

import pytest

from qingluan.ids.snort import ALERTPKT_SIZE, SnortFormatError, parse_alertpkt

# offsets of the C struct Alertpkt on x86-64 (see the module docstring)
PKTH, DLTHDR, NETHDR, TRANSHDR, DATA, VAL, PKT, EVENT = 256, 272, 276, 280, 284, 288, 292, 65828


def ipv4_tcp(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    eth = b"\x02\x42\x00\x00\x00\x02" + b"\x02\x42\x00\x00\x00\x03" + b"\x08\x00"
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]) + src + dst
    tcp = struct.pack("!HH", sport, dport) + bytes(16)
    return eth + ip + tcp


def datagram(*, val: int = 0, message: bytes = b"qingluan test marker") -> bytes:
    buf = bytearray(ALERTPKT_SIZE)
    buf[: len(message)] = message
    packet = ipv4_tcp(bytes([10, 131, 0, 2]), bytes([10, 131, 0, 3]), 40000, 80)
    struct.pack_into("<IIII", buf, PKTH, 1_700_000_000, 250_000, len(packet), len(packet))
    struct.pack_into("<IIIII", buf, DLTHDR, 0, 14, 34, 54, val)
    buf[PKT : PKT + len(packet)] = packet
    # Event: gen 1, sid 1000001, rev 3, class 2, prio 1, event 77, ref 0, ref_time
    struct.pack_into("<IIIIIIIII", buf, EVENT, 1, 1_000_001, 3, 2, 1, 77, 0, 0, 0)
    return bytes(buf)


def test_the_layout_is_65864_bytes_with_the_pad() -> None:
    assert ALERTPKT_SIZE == 65_864 == EVENT + 36


def test_a_datagram_of_x86_64_snort_is_read_right() -> None:
    alert = parse_alertpkt(datagram())
    assert alert.message == "qingluan test marker"
    assert (alert.sig_generator, alert.sig_id, alert.sig_rev) == (1, 1_000_001, 3)
    assert (alert.classification, alert.priority, alert.event_id) == (2, 1, 77)
    assert alert.seconds == pytest.approx(1_700_000_000.25)
    assert (alert.src_ip, alert.dst_ip, alert.protocol) == ("10.131.0.2", "10.131.0.3", 6)
    assert (alert.src_port, alert.dst_port) == (40000, 80)


def test_val_flags_say_which_headers_there_are() -> None:
    assert parse_alertpkt(datagram(val=0x1)).src_ip is None  # no packet structure
    no_ports = parse_alertpkt(datagram(val=0x2))
    assert no_ports.src_ip == "10.131.0.2" and no_ports.dst_port is None


def test_os_kens_parser_gets_this_datagram_wrong() -> None:
    """Why qingluan does not use os_ken.lib.alert: network byte order and no pad."""
    from os_ken.lib import alert as osken_alert

    parsed = osken_alert.AlertPkt.parser(datagram())
    assert parsed.event.sig_id != 1_000_001


@pytest.mark.parametrize("size", [0, 65_863, 65_872])
def test_other_sizes_are_refused_with_the_reason(size: int) -> None:
    with pytest.raises(SnortFormatError, match=f"is {ALERTPKT_SIZE} bytes, not {size}"):
        parse_alertpkt(bytes(size))
