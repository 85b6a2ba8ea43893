"""The layout's one rule: arrows between the top-level packages go one way, service -> enroll -> biometrics."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What each package may not import: everything above it.
FORBIDDEN = {"biometrics": ("service", "enroll"), "enroll": ("service",)}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def wrong_way_arrows(package: str) -> list[str]:
    above = FORBIDDEN[package]
    return [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in sorted((REPO / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in above
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_one_above_it(package):
    assert wrong_way_arrows(package) == []


@pytest.mark.parametrize("runtime", ["biometrics/voice", "biometrics/scoring"])
def test_what_runs_in_the_service_imports_nothing_of_the_audits(runtime):
    """``biometrics/evaluation/`` is for accuracy audits only: scoring at run time never depends on it."""
    found = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in sorted((REPO / runtime).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.startswith("biometrics.evaluation")
    ]
    assert found == []


def test_the_check_sees_a_lazy_import_the_wrong_way(tmp_path, monkeypatch):
    (tmp_path / "biometrics").mkdir()
    lazy = "import numpy\n\ndef f():\n    from service.context import ServiceContext\n"
    (tmp_path / "biometrics" / "x.py").write_text(lazy)
    (tmp_path / "enroll").mkdir()
    (tmp_path / "enroll" / "y.py").write_text("from biometrics.voice import templates\nimport service.store\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert wrong_way_arrows("biometrics") == ["biometrics/x.py:4 imports service.context"]
    assert wrong_way_arrows("enroll") == ["enroll/y.py:2 imports service.store"]
