"""Table QUARANTINE: what a quarantined endpoint or flow can still send, and the IDS mirror.

Packets are run through the computed bridge with the simulator, so these say what
happens to traffic, not which messages are sent.
"""

from __future__ import annotations

from qingluan import names
from qingluan.controller.pipeline import Policy, compute_bridge
from qingluan.controller.pipeline.sim import simulate
from qingluan.model import (
    IDS_OPTION,
    AclProtocol,
    Endpoint,
    Network,
    Quarantine,
    QuarantineScope,
)
from tests.unit.test_acl_compile import ep, net

IDS = 9


def _ids(network: Network) -> Network:
    return network.model_copy(update={"options": {IDS_OPTION: "true"}})


def _quarantine(endpoint: Endpoint, scope: QuarantineScope, **extra: object) -> Quarantine:
    return Quarantine.model_validate(
        {
            "id": f"q-{endpoint.id[:6]}-{scope.value}",
            "endpoint_id": endpoint.id,
            "host": endpoint.host,
            "network_id": endpoint.network_id,
            "mac": endpoint.mac,
            "address": endpoint.address,
            "scope": scope,
            "created_at": 0.0,
            **extra,
        }
    )


def _udp(src: Endpoint, dst: Endpoint, sport: int = 4000, dport: int = 53) -> dict[str, int | str]:
    return {
        "eth_src": src.mac,
        "eth_dst": dst.mac,
        "eth_type": 0x0800,
        "ipv4_src": src.address,
        "ipv4_dst": dst.address,
        "ip_proto": 17,
        "udp_src": sport,
        "udp_dst": dport,
    }


def _bridge(network: Network, quarantines: tuple[Quarantine, ...] = (), ids_port: bool = True):  # type: ignore[no-untyped-def]
    a, b, c = ep(network, 1), ep(network, 2), ep(network, 3)
    ports = {a.port_name: 2, b.port_name: 3, c.port_name: 4}
    if ids_port:
        ports[names.IDS_PORT] = IDS
    policy = Policy(networks=(network,), endpoints=(a, b, c), quarantines=quarantines)
    return compute_bridge([network], [a, b, c], ports, policy=policy), a, b, c


def test_an_endpoint_in_quarantine_sends_nothing_and_the_others_still_do() -> None:
    n = net(1)
    _, a, b, _ = _bridge(n)
    state, _, _, _ = _bridge(n, (_quarantine(a, QuarantineScope.ENDPOINT),))
    assert simulate(state, 2, _udp(a, b)) == []
    arp = {"eth_src": a.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806, "arp_op": 1,
           "arp_sha": a.mac, "arp_spa": a.address, "arp_tpa": b.address}  # fmt: skip
    assert simulate(state, 2, arp) == []
    assert [p for p, _ in simulate(state, 3, _udp(b, a))] == [2]  # it still receives
    c = ep(n, 3)
    assert [p for p, _ in simulate(state, 4, _udp(c, b))] == [3]


def test_a_flow_quarantine_drops_only_that_flow() -> None:
    n = net(1)
    _, a, b, c = _bridge(n)
    q = _quarantine(a, QuarantineScope.FLOW, protocol=AclProtocol.UDP, ipv4_dst=b.address,
                    dst_port=53)  # fmt: skip
    state, _, _, _ = _bridge(n, (q,))
    assert simulate(state, 2, _udp(a, b, dport=53)) == []
    assert [p for p, _ in simulate(state, 2, _udp(a, b, dport=54))] == [3]
    assert [p for p, _ in simulate(state, 2, _udp(a, c, dport=53))] == [4]


def test_a_quarantine_of_another_hosts_endpoint_makes_no_flow_here() -> None:
    n = net(1)
    _, a, b, _ = _bridge(n)
    elsewhere = _quarantine(a, QuarantineScope.ENDPOINT).model_copy(update={"host": "h2"})
    state, _, _, _ = _bridge(n, (elsewhere,))
    assert [p for p, _ in simulate(state, 2, _udp(a, b))] == [3]


def test_an_inspected_network_copies_every_packet_to_the_ids_port() -> None:
    n = _ids(net(1))
    state, a, b, _ = _bridge(n)
    out = simulate(state, 2, _udp(a, b))
    assert sorted(p for p, _ in out) == [3, IDS]
    assert all(packet == _udp(a, b) for _, packet in out)  # an unchanged copy


def test_a_network_without_ids_and_a_host_without_the_port_are_not_mirrored() -> None:
    state, a, b, _ = _bridge(net(1))
    assert [p for p, _ in simulate(state, 2, _udp(a, b))] == [3]
    state, a, b, _ = _bridge(_ids(net(1)), ids_port=False)
    assert [p for p, _ in simulate(state, 2, _udp(a, b))] == [3]


def test_a_quarantined_endpoints_packets_are_not_mirrored_either() -> None:
    n = _ids(net(1))
    _, a, b, _ = _bridge(n)
    state, _, _, _ = _bridge(n, (_quarantine(a, QuarantineScope.ENDPOINT),))
    assert simulate(state, 2, _udp(a, b)) == []
    assert sorted(p for p, _ in simulate(state, 3, _udp(b, a))) == [2, IDS]
