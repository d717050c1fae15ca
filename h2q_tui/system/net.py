"""Listening sockets for the servers (``serve``, ``web``): one clear line when a port
cannot be had, and whether an address is reachable only from this machine."""

from __future__ import annotations

import errno
import ipaddress
import socket

from h2q_tui.errors import UserError


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (the addresses only this machine reaches)."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int, holder: str = "") -> socket.socket:
    """A listening socket on host:port; UserError (one line) when it cannot be had.

    ``holder``: a guess at what holds a port in use, for the message.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is in use{f' ({holder})' if holder else ''}: "
                "stop it or pick another --port"
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UserError(
                f"not allowed to bind {host}:{port} (ports below 1024 need root)"
            ) from None
        raise UserError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
