"""The pure pipeline: from a host's networks and endpoints to the flows and groups of its bridge.

``compute_bridge`` is the entry point (``bridge.py``); ``flow.py`` is the
vocabulary, ``tables.py`` the declared tables, ``sim.py`` an evaluator that
runs a packet through the result.
"""

from qingluan.controller.pipeline.acl import Policy
from qingluan.controller.pipeline.bridge import Peer, compute_bridge

__all__ = ["Peer", "Policy", "compute_bridge"]
