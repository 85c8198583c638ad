"""Docker requests as dockerd 20.10 sends them, and options in qingluan terms."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qingluan.driver import protocol as p
from qingluan.errors import InvalidRequest
from qingluan.model import NetworkModel, PortMapping, Protocol

NET_ID = "4f2a" * 16

# What dockerd 20.10 sent here for `docker network create ... --opt model=bogus --ipam-opt pool=nat`
SEEN_CREATE_NETWORK: dict[str, Any] = {
    "NetworkID": NET_ID,
    "Options": {
        "com.docker.network.enable_ipv6": False,
        "com.docker.network.generic": {"model": "bogus"},
    },
    "IPv4Data": [{"AddressSpace": "l", "Gateway": "10.171.0.1/24", "Pool": "10.171.0.0/24"}],
    "IPv6Data": [],
}


def net_opts(**generic: str) -> dict[str, object]:
    return {"com.docker.network.generic": generic}


# ---- request models ----------------------------------------------------------


def test_create_network_request_as_docker_sends_it():
    req = p.CreateNetworkRequest.model_validate_json(json.dumps(SEEN_CREATE_NETWORK))
    assert req.network_id == NET_ID
    assert req.ipv4_data[0].pool == "10.171.0.0/24"
    assert req.ipv4_data[0].gateway == "10.171.0.1/24"
    assert p.generic_options(req.options) == {"model": "bogus"}


def test_requests_tolerate_unknown_fields_and_go_nulls():
    body = {
        "NetworkID": NET_ID,
        "Options": None,
        "IPv4Data": None,
        "IPv6Data": None,
        "SomethingNewer": {"x": 1},
    }
    req = p.CreateNetworkRequest.model_validate(body)
    assert req.options == {} and req.ipv4_data == [] and req.ipv6_data == []
    ep = p.CreateEndpointRequest.model_validate(
        {"NetworkID": "n", "EndpointID": "e", "Interface": None, "Options": None}
    )
    assert ep.interface.address == "" and ep.options == {}
    data = p.IPAMData.model_validate({"Pool": "10.0.0.0/24", "AuxAddresses": None})
    assert data.aux_addresses == {}


def test_missing_ids_are_rejected():
    with pytest.raises(ValueError):
        p.EndpointRequest.model_validate({"NetworkID": "n"})
    with pytest.raises(ValueError):
        p.NetworkRequest.model_validate({"NetworkID": ""})


def test_replies_use_docker_names_and_omit_none():
    reply = p.JoinReply(
        interface_name=p.InterfaceName(src_name="qlcabc", dst_prefix="eth"),
        disable_gateway_service=True,
    )
    assert json.loads(reply.model_dump_json(by_alias=True, exclude_none=True)) == {
        "InterfaceName": {"SrcName": "qlcabc", "DstPrefix": "eth"},
        "DisableGatewayService": True,
    }
    empty = p.CreateEndpointReply()
    assert empty.model_dump(by_alias=True, exclude_none=True) == {}
    mac = p.CreateEndpointReply(interface=p.InterfaceReply(mac_address="52:45:00:00:00:01"))
    assert mac.model_dump(by_alias=True, exclude_none=True) == {
        "Interface": {"MacAddress": "52:45:00:00:00:01"}
    }


# ---- network options ---------------------------------------------------------


@pytest.mark.parametrize("model", list(NetworkModel))
def test_every_model_parses(model):
    generic = {"model": model.value}
    if model is NetworkModel.VLAN:
        generic["vni"] = "100"
    if model is NetworkModel.VXLAN:
        generic["vni"] = "5000"
    assert p.parse_network_options(net_opts(**generic)).model is model


def test_model_defaults_to_nat_and_is_case_insensitive():
    assert p.parse_network_options({}).model is NetworkModel.NAT
    assert p.parse_network_options(net_opts(model="NoNat")).model is NetworkModel.NONAT


def test_unknown_model_names_the_choices():
    with pytest.raises(InvalidRequest) as exc:
        p.parse_network_options(net_opts(model="bogus"))
    assert str(exc.value) == "unknown network model 'bogus' (choose nonat, nat, flat, vlan, vxlan)"


def test_ids_option_is_kept_normalised():
    assert p.parse_network_options(net_opts(model="nat", ids="True")).extra["ids"] == "true"


@pytest.mark.parametrize(
    ("generic", "message"),
    [
        ({"model": "vlan", "vni": "4095"}, "--opt vni=4095: VLAN id must be 1-4094"),
        ({"model": "vlan", "vni": "0"}, "--opt vni=0: VLAN id must be 1-4094"),
        ({"model": "vlan", "vni": "abc"}, "--opt vni=abc is not a number"),
        ({"model": "vlan"}, "model=vlan needs --opt vni=<VLAN id 1-4094>"),
        ({"model": "vxlan"}, "model=vxlan needs --opt vni=<VNI 1-16777215>"),
        ({"model": "vxlan", "vni": "16777216"}, "--opt vni=16777216: VXLAN VNI must be 1-16777215"),
        ({"model": "nat", "vni": "100"}, "--opt vni=100: a nat network takes no vni"),
        ({"model": "vxlan", "vni": "5", "nat": "maybe"}, "--opt nat=maybe: say true or false"),
        (
            {"model": "nat", "acl_default": "block"},
            "--opt acl_default=block: say allow or deny (what the network's ACLs do with "
            "traffic no rule matches)",
        ),
        (
            {"model": "nat", "ids": "yes please"},
            "--opt ids=yes please: say true or false (whether the host's IDS inspects the "
            "network's traffic)",
        ),
        (
            {"model": "nat", "nat": "true"},
            "--opt nat is for vxlan networks; a nat network is NATed or not by its model "
            "(model=nat or model=nonat)",
        ),
        (
            {"model": "nat", "com.docker.network.driver.mtu": "big"},
            "--opt com.docker.network.driver.mtu=big is not a number",
        ),
        (
            {"model": "nat", "com.docker.network.driver.mtu": "100"},
            "--opt com.docker.network.driver.mtu=100: MTU must be 576-9000",
        ),
    ],
)
def test_bad_options_name_the_option(generic, message):
    with pytest.raises(InvalidRequest) as exc:
        p.parse_network_options(net_opts(**generic))
    assert str(exc.value) == message


def test_vlan_mtu_internal_and_unknown_options_are_kept():
    options = {
        "com.docker.network.internal": True,
        "com.docker.network.enable_ipv6": False,
        "com.docker.network.generic": {
            "model": "vlan",
            "vni": " 100 ",
            "com.docker.network.driver.mtu": "1400",
            "parent": "eth1",
            "future-thing": "x",
        },
    }
    opts = p.parse_network_options(options)
    assert opts == p.NetworkOptions(
        model=NetworkModel.VLAN,
        vni=100,
        mtu=1400,
        internal=True,
        extra={"parent": "eth1", "future-thing": "x"},
    )


def test_mtu_short_key_and_ipv6_refused():
    assert p.parse_network_options(net_opts(model="nat", mtu="1450")).mtu == 1450
    with pytest.raises(InvalidRequest, match="IPv4 only"):
        p.parse_network_options({"com.docker.network.enable_ipv6": True})


def test_generic_must_be_an_object():
    with pytest.raises(InvalidRequest, match="generic"):
        p.parse_network_options({"com.docker.network.generic": "model=nat"})


def test_single_ipv4_data():
    req = p.CreateNetworkRequest.model_validate(SEEN_CREATE_NETWORK)
    assert p.single_ipv4_data(req).pool == "10.171.0.0/24"
    two = {**SEEN_CREATE_NETWORK, "IPv4Data": SEEN_CREATE_NETWORK["IPv4Data"] * 2}
    with pytest.raises(InvalidRequest, match="one subnet"):
        p.single_ipv4_data(p.CreateNetworkRequest.model_validate(two))
    none = {**SEEN_CREATE_NETWORK, "IPv4Data": []}
    with pytest.raises(InvalidRequest, match="qingluanIpam"):
        p.single_ipv4_data(p.CreateNetworkRequest.model_validate(none))
    v6 = {**SEEN_CREATE_NETWORK, "IPv6Data": [{"Pool": "fd00::/64"}]}
    with pytest.raises(InvalidRequest, match="IPv4 only"):
        p.single_ipv4_data(p.CreateNetworkRequest.model_validate(v6))


# ---- IPAM options ------------------------------------------------------------


def test_request_pool_named_pool_and_subnet():
    req = p.RequestPoolRequest.model_validate(
        {
            "AddressSpace": "qingluan-local",
            "Pool": "192.168.2.0/24",
            "SubPool": "192.168.2.128/25",
            "Options": {"pool": "nat"},
            "V6": False,
        }
    )
    body = p.parse_pool_request(req)
    assert body.pool == "nat"
    assert body.subnet == "192.168.2.0/24"
    assert body.ip_range == "192.168.2.128/25"
    assert body.options == {"pool": "nat"}


def test_request_pool_defaults_and_vni_option():
    empty = p.RequestPoolRequest.model_validate({"Options": None})
    assert p.parse_pool_request(empty).pool == "nat"
    assert p.parse_pool_request(empty).subnet is None
    vlan = p.RequestPoolRequest.model_validate({"Options": {"pool": "vlan", "vni": "100"}})
    assert p.parse_pool_request(vlan).options == {"pool": "vlan", "vni": "100"}
    bad = p.RequestPoolRequest.model_validate({"Options": {"pool": "vlan", "vni": "x"}})
    with pytest.raises(InvalidRequest, match=r"--ipam-opt vni=x is not a number"):
        p.parse_pool_request(bad)


def test_request_pool_errors():
    with pytest.raises(InvalidRequest, match="IPv6"):
        p.parse_pool_request(p.RequestPoolRequest.model_validate({"V6": True}))
    bad = p.RequestPoolRequest.model_validate({"Pool": "10.0.0.1/24"})
    with pytest.raises(InvalidRequest, match=r"^--subnet: '10.0.0.1/24' is not an IPv4 subnet"):
        p.parse_pool_request(bad)
    outside = p.RequestPoolRequest.model_validate({"Pool": "10.0.0.0/24", "SubPool": "10.0.1.0/25"})
    with pytest.raises(InvalidRequest, match=r"--ip-range: 10.0.1.0/25 is not inside"):
        p.parse_pool_request(outside)
    name = p.RequestPoolRequest.model_validate({"Options": {"pool": "bad name!"}})
    with pytest.raises(InvalidRequest, match=r"^--ipam-opt pool: "):
        p.parse_pool_request(name)


def test_request_address_gateway_mac_and_given_address():
    gw = p.RequestAddressRequest.model_validate(
        {
            "PoolID": "nat_10.128.0.0_24",
            "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"},
        }
    )
    assert p.parse_address_request(gw).model_dump() == {
        "address": None,
        "mac": None,
        "gateway": True,
    }
    ep = p.RequestAddressRequest.model_validate(
        {
            "PoolID": "nat_10.128.0.0_24",
            "Address": "10.128.0.7",
            "Options": {"com.docker.network.endpoint.macaddress": "02:42:0A:80:00:07"},
        }
    )
    assert p.parse_address_request(ep).model_dump() == {
        "address": "10.128.0.7",
        "mac": "02:42:0a:80:00:07",
        "gateway": False,
    }
    bad = p.RequestAddressRequest.model_validate({"PoolID": "x", "Address": "10.1.2"})
    with pytest.raises(InvalidRequest, match=r"^address: "):
        p.parse_address_request(bad)


def test_endpoint_address():
    iface = p.EndpointInterface.model_validate({"Address": "10.128.0.7/24"})
    assert p.endpoint_address(iface) == "10.128.0.7"
    with pytest.raises(InvalidRequest, match="qingluanIpam"):
        p.endpoint_address(p.EndpointInterface())
    with pytest.raises(InvalidRequest, match="IPv4 only"):
        p.endpoint_address(p.EndpointInterface.model_validate({"AddressIPv6": "fd00::2/64"}))


# ---- port maps -----------------------------------------------------------------


def portmap(*entries: dict[str, object]) -> dict[str, object]:
    return {"com.docker.network.portmap": list(entries)}


def binding(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "Proto": 6,
        "IP": "",
        "Port": 80,
        "HostIP": "",
        "HostPort": 8080,
        "HostPortEnd": 8080,
    }
    return {**base, **kw}


def test_port_map_as_docker_sends_it():
    got = p.parse_port_mappings(portmap(binding()))
    assert got == (
        PortMapping(
            proto=Protocol.TCP, container_port=80, host_port=8080, host_port_end=8080, host_ip=""
        ),
    )


def test_port_map_udp_sctp_ranges_host_ip_and_ipv6_twins():
    got = p.parse_port_mappings(
        portmap(
            binding(Proto=17, Port=53, HostPort=5353, HostPortEnd=0),
            binding(Proto=132, Port=9, HostIP="127.0.0.1", HostPort=9000, HostPortEnd=9010),
            binding(HostIP="0.0.0.0"),
            binding(HostIP="::"),
            binding(),  # duplicate of the 0.0.0.0 one
        )
    )
    assert [(m.proto, m.host_ip, m.host_port, m.host_port_end, m.container_port) for m in got] == [
        (Protocol.UDP, "", 5353, 5353, 53),
        (Protocol.SCTP, "127.0.0.1", 9000, 9010, 9),
        (Protocol.TCP, "", 8080, 8080, 80),
    ]
    assert p.parse_port_mappings({}) == ()


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (binding(HostPort=0, HostPortEnd=0), r"-p 80/tcp: qingluan publishes only explicit"),
        (binding(Proto=1), "IP protocol 1 cannot be published"),
        (binding(HostPort=9000, HostPortEnd=8000), "range 9000-8000"),
        (binding(HostIP="not-an-ip"), "not an IPv4 host address"),
        (binding(Port=0), "container port must be 1-65535"),
        (binding(Port="x"), "Port='x' is not a number"),
    ],
)
def test_port_map_errors(entry, match):
    with pytest.raises(InvalidRequest, match=match):
        p.parse_port_mappings(portmap(entry))


def test_portmap_round_trip():
    got = p.parse_port_mappings(portmap(binding(Proto=17, HostIP="127.0.0.1")))
    assert p.portmap_value(got) == [binding(Proto=17, HostIP="127.0.0.1")]
