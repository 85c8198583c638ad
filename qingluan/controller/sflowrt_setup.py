"""What the controller pushes to sFlow-RT and how it reacts to its events.

``--sflow-rt URL`` alone uses the built-in set below; ``--sflow-rt-config FILE`` (YAML)
replaces it::

    flows:
      - {name: qingluan_udp, keys: [ipsource, ipdestination, udpdestinationport],
         value: bytes, filter: "ipprotocol=17"}
    thresholds:
      - {name: qingluan_udp_flood, metric: qingluan_udp, value: 12500000}
    reactions:
      - {threshold: qingluan_udp_flood, action: drop, quiet_seconds: 30}

Values are per second (sFlow-RT's flow metrics are rates). Automatic rules of
sFlow-RT's events get ids ``auto-rt-<priority>`` and priorities 3950-3999.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qingluan.controller.monitor.reactions import Reaction
from qingluan.controller.monitor.sflowrt import FlowSpec, ThresholdSpec

RT_PRIORITY_BASE, RT_PRIORITY_SLOTS = 3950, 50
RT_PREFIX = "auto-rt-"  # ids of the steering rules sFlow-RT's events make


class _Flow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    keys: list[str] = Field(min_length=1)
    value: str = "bytes"
    filter: str | None = None


class _Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    metric: str
    value: float = Field(gt=0)
    timeout: float | None = None


class _Reaction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: str
    action: str = Field(pattern="^(drop|rate_limit)$")
    rate_kbps: int | None = None
    burst_kbits: int | None = None
    quiet_seconds: float = 30.0


class RtSetup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flows: list[_Flow]
    thresholds: list[_Threshold]
    reactions: list[_Reaction]

    def flow_specs(self) -> list[FlowSpec]:
        return [FlowSpec(f.name, tuple(f.keys), f.value, f.filter) for f in self.flows]

    def threshold_specs(self) -> list[ThresholdSpec]:
        return [ThresholdSpec(t.name, t.metric, t.value, True, t.timeout) for t in self.thresholds]

    def reaction_list(self) -> list[Reaction]:
        return [
            Reaction(
                threshold=r.threshold,
                action=r.action,
                rate_kbps=r.rate_kbps,
                burst_kbits=r.burst_kbits,
                quiet_seconds=r.quiet_seconds,
                priority_base=RT_PRIORITY_BASE,
                priority_slots=RT_PRIORITY_SLOTS,
            )
            for r in self.reactions
        ]


BUILT_IN = RtSetup(
    flows=[
        _Flow(
            name="qingluan_udp",
            keys=["ipsource", "ipdestination", "udpdestinationport"],
            filter="ipprotocol=17",
        ),
        _Flow(
            name="qingluan_tcp",
            keys=["ipsource", "ipdestination", "tcpdestinationport"],
            filter="ipprotocol=6",
        ),
    ],
    thresholds=[
        # 100 Mbit/s of UDP from one source to one port: a flood
        _Threshold(name="qingluan_udp_flood", metric="qingluan_udp", value=12_500_000),
        # 500 Mbit/s in one TCP connection: an elephant
        _Threshold(name="qingluan_elephant", metric="qingluan_tcp", value=62_500_000),
    ],
    reactions=[
        _Reaction(threshold="qingluan_udp_flood", action="drop"),
        _Reaction(threshold="qingluan_elephant", action="rate_limit", rate_kbps=100_000),
    ],
)


def load_setup(path: Path | None) -> RtSetup:
    """The setup in ``path`` (YAML), or the built-in one; ``ValueError`` names the problem."""
    if path is None:
        return BUILT_IN
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"sFlow-RT config {path}: {exc}") from None
    try:
        setup = RtSetup.model_validate(doc)
    except ValidationError as exc:
        raise ValueError(f"sFlow-RT config {path}: {exc}") from None
    flows = {f.name for f in setup.flows}
    for t in setup.thresholds:
        if t.metric not in flows:
            raise ValueError(f"sFlow-RT config {path}: threshold {t.name}: no flow {t.metric!r}")
    names = {t.name for t in setup.thresholds}
    reacted: set[str] = set()
    for r in setup.reactions:
        if r.threshold not in names:
            raise ValueError(f"sFlow-RT config {path}: reaction for unknown {r.threshold!r}")
        if r.threshold in reacted:
            raise ValueError(f"sFlow-RT config {path}: two reactions for {r.threshold!r}")
        reacted.add(r.threshold)
    try:
        setup.reaction_list()
    except ValidationError as exc:
        raise ValueError(f"sFlow-RT config {path}: {exc}") from None
    return setup
