"""The core stays platform-free, and the tests' own network guard really guards."""

from __future__ import annotations

import ast
import socket

import pytest

from tests import netguard
from tests.helpers import ROOT

PLATFORM_MODULES = {"discord", "slack_bolt", "slack_sdk", "adapters"}


def test_bot_imports_no_platform_library():
    offenders = []
    for path in (ROOT / "bot").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in PLATFORM_MODULES]
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
                offenders.append(f"{path.name}: dynamic import")
    assert offenders == []


def test_guard_refuses_anything_but_loopback():
    assert netguard.address_allowed(socket.AF_INET, ("127.0.0.1", 80))
    assert netguard.address_allowed(socket.AF_INET6, ("::1", 80, 0, 0))
    for address in (("10.0.0.1", 80), ("192.168.1.1", 443), ("8.8.8.8", 53)):
        assert not netguard.address_allowed(socket.AF_INET, address)


def test_guard_stops_lookups_before_they_leave(monkeypatch):
    monkeypatch.setattr(netguard, "violations", [])
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.com", 443)
    assert netguard.violations == ["lookup of 'example.com'"]
