"""Rendezvous ports: one place that asks the kernel for a free one."""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (bind to port 0 and read what the kernel gave).

    Another process can take it between this call and the bind that uses it; the launchers
    bind within a second, which is as good as a single machine can do without a port server.
    """
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
