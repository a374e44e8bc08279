"""Every import runs down the floors of docs/architecture.md ("Layout"): a package imports only
packages on floors below its own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The table of docs/architecture.md, "Layout": floor of each package.
FLOORS = {"commands": 5, "loadtest": 5, "gateway": 4, "ingest": 4, "validator": 4, "client": 3, "stores": 3,
          "unggah": 2, "metrics": 2, "buffer": 1, "dukungan": 1}


def imports_of(path: Path, package: str) -> set[str]:
    """The packages of ours a module imports (relative imports stay in their package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return {p for p in out if p in FLOORS and p != package}


def test_every_package_imports_only_packages_on_floors_below_its_own():
    upward = []
    for package, floor in FLOORS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for other in imports_of(path, package):
                if FLOORS[other] >= floor:
                    upward.append(f"{path.relative_to(ROOT)} imports {other} (floor {FLOORS[other]} >= {floor})")
    assert upward == []


def test_the_floor_table_names_every_package_of_the_project():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(FLOORS)
