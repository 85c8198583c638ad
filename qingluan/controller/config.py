"""Settings of ``qingluan controller``, validated once when the process starts."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_STATE_DIR = Path("/var/lib/qingluan")
TOKEN_FILE = "token"

# Address pools that ``--ipam-opt pool=<name>`` may name, with the range each
# carves its /24 subnets from. None: the pool exists but needs --subnet.
DEFAULT_POOL_RANGES: dict[str, str | None] = {
    "nat": "10.128.0.0/16",
    "nonat": "10.129.0.0/16",
    "vlan": "10.130.0.0/16",
    "vxlan": "10.131.0.0/16",
    "flat": None,
}
DEFAULT_CARVE_PREFIX = 24

_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def _listen_host(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if _HOSTNAME.match(value):
            return value
        raise ValueError(f"{value!r} is neither an IP address nor a host name") from None


class ControllerConfig(BaseModel):
    """Where the controller keeps its state, where it listens, which pools it serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: Path = Field(default=DEFAULT_STATE_DIR, description="SQLite state and the token")
    api_host: str = Field(default="127.0.0.1", description="REST API listen address")
    api_port: int = Field(default=6680, ge=1, le=65535)
    openflow_host: str = Field(default="0.0.0.0", description="OpenFlow listen address")
    openflow_port: int = Field(default=6653, ge=1, le=65535)
    token_file: Path | None = Field(default=None, description="default: <state_dir>/token")
    pool_ranges: dict[str, str | None] = Field(
        default_factory=lambda: dict(DEFAULT_POOL_RANGES),
        description="address-pool name -> range to carve subnets from (None: --subnet only)",
    )
    carve_prefix: int = Field(
        default=DEFAULT_CARVE_PREFIX, ge=8, le=30, description="prefix of carved subnets"
    )
    converge_timeout: float = Field(
        default=5.0, gt=0, le=300, description="seconds a REST call waits for a bridge"
    )
    resync_interval: float = Field(
        default=30.0, ge=0, le=3600, description="seconds between full resyncs (0: never)"
    )
    sflow_host: str | None = Field(
        default=None, description="embedded sFlow collector address (default: openflow_host)"
    )
    sflow_port: int = Field(default=6343, ge=0, le=65535, description="0: no collector")
    sflow_rt_url: str | None = Field(
        default=None, description="sFlow-RT REST API to take threshold events from"
    )
    sflow_rt_config: Path | None = Field(
        default=None, description="sFlow-RT flows, thresholds and reactions (YAML)"
    )

    @field_validator("sflow_host")
    @classmethod
    def _check_sflow_host(cls, value: str | None) -> str | None:
        return None if value is None else _listen_host(value)

    @field_validator("sflow_rt_url")
    @classmethod
    def _check_rt_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+(/.*)?$", value):
            raise ValueError(f"{value!r} is not an http(s) URL like http://127.0.0.1:8008")
        return value

    @field_validator("api_host", "openflow_host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        return _listen_host(value)

    @field_validator("pool_ranges")
    @classmethod
    def _check_ranges(cls, ranges: dict[str, str | None]) -> dict[str, str | None]:
        if not ranges:
            raise ValueError("at least one address pool is needed")
        checked: dict[str, str | None] = {}
        seen: list[tuple[str, ipaddress.IPv4Network]] = []
        for name, cidr in ranges.items():
            if not _POOL_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid address-pool name")
            if cidr is None:
                checked[name] = None
                continue
            try:
                net = ipaddress.IPv4Network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"pool {name}: {cidr!r} is not an IPv4 range ({exc})") from None
            for other, other_net in seen:
                if net.overlaps(other_net):
                    raise ValueError(
                        f"pool {name}: range {net} overlaps pool {other} ({other_net})"
                    )
            seen.append((name, net))
            checked[name] = str(net)
        return checked

    @model_validator(mode="after")
    def _ranges_fit_carving(self) -> ControllerConfig:
        for name, cidr in self.pool_ranges.items():
            if cidr is not None and ipaddress.IPv4Network(cidr).prefixlen > self.carve_prefix:
                raise ValueError(
                    f"pool {name}: range {cidr} is smaller than one /{self.carve_prefix} subnet"
                )
        return self

    @property
    def token_path(self) -> Path:
        return self.token_file if self.token_file is not None else self.state_dir / TOKEN_FILE

    @property
    def api_url(self) -> str:
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"http://{host}:{self.api_port}"


def parse_pool_ranges(
    specs: Iterable[str], base: dict[str, str | None] | None = None
) -> dict[str, str | None]:
    """Pool ranges from CLI words like ``nat=10.128.0.0/16`` or ``flat=`` (subnet only).

    Each word replaces (or adds) one pool of ``base`` (default: the built-in
    pools); the result still goes through ``ControllerConfig`` validation.
    """
    ranges = dict(DEFAULT_POOL_RANGES if base is None else base)
    for spec in specs:
        name, sep, cidr = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"{spec!r}: a pool range looks like nat=10.128.0.0/16 or flat=")
        ranges[name] = cidr or None
    return ranges
