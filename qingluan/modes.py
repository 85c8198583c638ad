"""What each network mode needs on a host, as predicates over a ``Network``.

One place for the questions the driver's handlers, its host plumbing and its
iptables rules all ask: does the network have a gateway device on this host,
is it NATed out of the host, does it ride a physical NIC or a tunnel.
"""

from __future__ import annotations

from qingluan.model import Network, NetworkModel

NAT_OPTION = "nat"  # vxlan: --opt nat=true|false (default true)

# Models with a gateway veth on every host that has the network (vxlan: the same
# address and MAC on every host, a distributed anycast gateway).
GATEWAY_DEV_MODELS = frozenset({NetworkModel.NAT, NetworkModel.NONAT, NetworkModel.VXLAN})
# Models carried by a physical NIC of the host (flat: untagged, vlan: tagged).
UPLINK_MODELS = frozenset({NetworkModel.FLAT, NetworkModel.VLAN})
# Models whose endpoint traffic leaves the host through an OVS tunnel port.
TUNNELLED_MODELS = frozenset({NetworkModel.VXLAN})


def has_gateway_dev(network: Network) -> bool:
    return network.model in GATEWAY_DEV_MODELS


def is_tunnelled(network: Network) -> bool:
    """Whether traffic of ``network``'s ports goes through an OVS tunnel (VXLAN)."""
    return network.model in TUNNELLED_MODELS


def vxlan_nat(network: Network) -> bool:
    """``--opt nat`` of a vxlan network: true unless it says false."""
    return network.options.get(NAT_OPTION, "true").strip().lower() != "false"


def is_natted(network: Network) -> bool:
    """Containers reach the outside through this host's NAT, and may publish ports."""
    if network.internal:
        return False
    if network.model is NetworkModel.NAT:
        return True
    return network.model is NetworkModel.VXLAN and vxlan_nat(network)


def is_isolated(network: Network) -> bool:
    """Has a gateway device but routes nothing in or out of the host."""
    return has_gateway_dev(network) and not is_natted(network)
