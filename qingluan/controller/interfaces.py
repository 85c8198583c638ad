"""The seams inside the controller process.

``StateSource`` is what the store-backed services offer to the reconciler
(the desired state of one host); ``Converger`` is what the reconciler offers
to the services (make a bridge equal to that state, and say when it is).
``qingluan.controller.main`` wires one to the other.
"""

from __future__ import annotations

from typing import Protocol

from qingluan.api_schema import FlowDump, ReconcileResult
from qingluan.controller.pipeline import Peer, Policy
from qingluan.model import Endpoint, Host, Network


class StateSource(Protocol):
    def host_by_dpid(self, dpid: int) -> Host | None:
        """The registered host whose bridge has this datapath id, if any."""

    def host_state(self, host: str) -> tuple[Host, list[Network], list[Endpoint]]:
        """A host with the networks and endpoints its bridge must serve.

        Raises ``qingluan.errors.NotFound`` for an unknown host.
        """

    def peers(self, host: str) -> list[Peer]:
        """The other hosts' sides of the host's vxlan networks (see ``pipeline.Peer``)."""

    def policy(self) -> Policy:
        """The ACL rules with the cluster's networks and endpoints they refer to."""


class Converger(Protocol):
    def converge(
        self,
        host: str,
        *,
        timeout: float = 5.0,
        require_ports: tuple[str, ...] = (),
        full: bool = False,
    ) -> ReconcileResult:
        """Make the host's bridge hold exactly the desired flows and groups.

        Diffs against what the last confirmed converge left on the switch, unless
        there is none or ``full``: then every flow and group is read back first.

        Returns once a barrier confirmed every change. ``require_ports`` waits
        (within ``timeout``) until those port names are on the bridge, so that
        an endpoint's flows exist before the call returns. Raises
        ``Unavailable`` when the bridge is not connected and ``Timeout`` when
        the switch or the ports do not answer in time.
        """

    def is_connected(self, host: str) -> bool: ...

    def ports(self, host: str) -> dict[str, int]:
        """Port name -> OpenFlow port number, as the switch last reported."""

    def dump(self, host: str) -> FlowDump:
        """The flows and groups the switch holds now, in ovs-ofctl's words."""
