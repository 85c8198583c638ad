"""A TCP server that answers every connection with the address it came from.

Run inside a test namespace (``python -m tests.support.whoami PORT SECONDS``)
to see the source address of NATed traffic. It stops by itself after SECONDS.
"""

from __future__ import annotations

import socket
import sys
import time


def serve(port: int, lifetime: float) -> None:
    deadline = time.monotonic() + lifetime
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(16)
        srv.settimeout(0.5)
        print("ready", flush=True)
        while time.monotonic() < deadline:
            try:
                conn, (peer, _) = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(f"{peer}\n".encode())


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]))
