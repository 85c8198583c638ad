"""The offline test images ``qingluan/busybox`` and ``qingluan/iperf3`` in a test dockerd.

``scripts/build-busybox-image`` builds both from Debian's busybox-static and
iperf3, without a registry. Here the tarballs are built once per test session
(into a cache directory with a marker that names the inputs it was built from)
and imported into each dockerd that asks, which takes about a second::

    ensure_images(dockerd)                 # an IsolatedDockerd, or a DOCKER_HOST value
    dockerd.docker("run", "--rm", BUSYBOX, "true")
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.dockerd import IsolatedDockerd

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-busybox-image"
BUSYBOX = "qingluan/busybox:latest"
IPERF3 = "qingluan/iperf3:latest"
IMAGES = ("busybox", "iperf3")
_INPUTS = (SCRIPT, Path("/bin/busybox"), Path("/usr/bin/iperf3"))


class ImageError(RuntimeError):
    """The images could not be built or imported."""


def _fingerprint() -> str:
    """What the tarballs depend on: the script's text and the binaries' identity."""
    digest = hashlib.sha256(SCRIPT.read_bytes())
    for path in _INPUTS[1:]:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageError(f"{path} is missing: run `make deps`") from None
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _run(argv: list[str], env: dict[str, str] | None, timeout: float) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ImageError(f"{' '.join(argv)} timed out after {timeout:.0f}s") from None
    if done.returncode != 0:
        raise ImageError(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )


def build_tarballs(cache_dir: Path, timeout: float = 120.0) -> Path:
    """Build the image tarballs into ``cache_dir`` unless its marker says they are current."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    marker = cache_dir / ".built"
    want = _fingerprint()
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers may share a cache directory
        if not (marker.exists() and marker.read_text() == want):
            marker.unlink(missing_ok=True)
            _run([str(SCRIPT), "--save", str(cache_dir)], None, timeout)
            marker.write_text(want)
    return cache_dir


@functools.cache
def session_cache_dir() -> Path:
    """A cache directory for this test process, removed when it exits."""
    path = Path(tempfile.mkdtemp(prefix="qingluan-images-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def ensure_images(
    dockerd: IsolatedDockerd | str,
    *,
    cache_dir: Path | None = None,
    timeout: float = 180.0,
) -> None:
    """Make ``qingluan/busybox`` and ``qingluan/iperf3`` present and current in a dockerd.

    ``dockerd`` is an ``IsolatedDockerd`` (remembered with a marker in its
    directory, so a second call costs nothing) or a ``DOCKER_HOST`` value.
    """
    if isinstance(dockerd, IsolatedDockerd):
        host, marker = dockerd.host, dockerd.base / "images.ok"
    else:
        host, marker = dockerd, None
    if marker is not None and marker.exists():
        return
    cache = build_tarballs(cache_dir or session_cache_dir())
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONTEXT"}
    env["DOCKER_HOST"] = host
    # the first import of these tarballs runs each image once; later ones trust them
    verified = cache / ".verified"
    trusted = verified.exists() and verified.read_text() == (cache / ".built").read_text()
    _run([str(SCRIPT), "--from", str(cache), *(["--no-verify"] if trusted else [])], env, timeout)
    if not trusted:
        verified.write_text((cache / ".built").read_text())
    if marker is not None:
        marker.write_text("qingluan/busybox qingluan/iperf3\n")
