"""Fails any test that reaches past loopback: connections and name lookups are checked."""

from __future__ import annotations

import socket

ALLOWED_HOSTS = {"127.0.0.1", "::1", "localhost", None, ""}
violations: list[str] = []

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def address_allowed(family: int, address) -> bool:
    if family == getattr(socket, "AF_UNIX", None):
        return True
    if family in (socket.AF_INET, socket.AF_INET6):
        return address[0] in ("127.0.0.1", "::1")
    return False


def _check(sock: socket.socket, address) -> None:
    if not address_allowed(sock.family, address):
        violations.append(f"connect to {address!r}")
        raise ConnectionRefusedError(f"test network guard: {address!r} is not loopback")


def _connect(self, address):
    _check(self, address)
    return _real_connect(self, address)


def _connect_ex(self, address):
    _check(self, address)
    return _real_connect_ex(self, address)


def _getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in ALLOWED_HOSTS:
        violations.append(f"lookup of {name!r}")
        raise socket.gaierror(socket.EAI_NONAME, f"test network guard: {name!r} is not loopback")
    return _real_getaddrinfo(host, *args, **kwargs)


def install() -> None:
    # Patching the socket class is the guard's whole point.
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo
