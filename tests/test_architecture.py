"""The core stays platform-free, and the tests' own network guard really guards."""

from __future__ import annotations

import ast
import socket

import pytest

from tests import netguard
from tests.helpers import ROOT

PLATFORM_MODULES = {"discord", "slack_bolt", "slack_sdk", "adapters"}
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path) -> set[str]:
    """The project's modules that `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found |= {".".join([*base, alias.name]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {n for n in found if n.split(".")[0] in ("bot", "adapters")}


def documented_imports() -> dict[str, set[str]]:
    """docs/architecture.md's module table: module -> what it may import."""
    table = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0] != "`module`":
            table[cells[0].strip("`")] = {w.strip("`") for w in cells[2].split()}
    return table


def test_every_module_imports_only_what_the_architecture_page_allows():
    allowed = documented_imports()
    sources = sorted([*(ROOT / "bot").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")])
    modules = {module_name(path): path for path in sources}
    assert set(modules) == set(allowed), "docs/architecture.md must name every module"
    stray = {
        name: sorted(project_imports(path) - allowed[name])
        for name, path in modules.items()
        if project_imports(path) - allowed[name]
    }
    assert stray == {}


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


def test_every_data_file_of_the_bot_is_packaged():
    """`pip install .` (the Dockerfile) ships only what pyproject's package-data names: a file
    the bot reads at run time (the ledger's SQL, the viewer's script) must be among them."""
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["bot"]
    packaged = {path for pattern in patterns for path in (ROOT / "bot").glob(pattern)}
    data = {
        path
        for path in (ROOT / "bot").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert any(path.suffix == ".sql" for path in data)
    assert data <= packaged, sorted(str(p.relative_to(ROOT)) for p in data - packaged)
