"""The REST API token: made on the controller's first start, kept in a root-only file.

The driver and the CLI read the same file (``read_token``), so a host that
can read ``<state-dir>/token`` can change the controller's state and nobody
else can.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_BYTES = 32
TOKEN_MODE = 0o600


def read_token(path: Path) -> str:
    """The token in ``path``; a clear ``ValueError``/``OSError`` if it is missing or empty."""
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no API token at {path}: start the controller once, or pass --token-file"
        ) from None
    if not token:
        raise ValueError(f"the API token file {path} is empty")
    return token


def load_or_create_token(path: Path) -> str:
    """The controller's token: read from ``path``, or generated and written there (0600).

    Creation uses ``O_EXCL``, so two controllers starting at once agree on one
    token. An existing file with looser permissions is tightened to 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, TOKEN_MODE)
    except FileExistsError:
        if path.stat().st_mode & 0o777 != TOKEN_MODE:
            os.chmod(path, TOKEN_MODE)
        return read_token(path)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
        out.flush()
        os.fsync(out.fileno())
    return token


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison of the presented token with the expected one."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()
