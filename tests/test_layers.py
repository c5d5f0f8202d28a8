"""Imports point down: cli -> api, sweep -> registry -> recipes -> training -> cache, export -> models, data -> core.

Read from the source (every `import` and `from ... import`, including those inside functions, which is
where recipes are imported lazily), so an upward import anywhere fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "unfreeze"

# The floor of each top-level module or package of `unfreeze`; a module may import its own floor or below.
FLOORS = {
    "errors": 0, "resources": 0, "files": 0, "config": 0, "scoring": 0, "offline": 0, "lifecycle": 0,
    "tracking": 0, "__init__": 0,
    "data": 1, "models": 1,
    "cache": 2, "export": 2,
    "training": 3,
    "recipes": 4,
    "registry": 5,
    "sweep": 6, "reporting": 6, "api": 6,
    "cli": 7, "__main__": 7,
}


def part(module: str) -> str:
    """'unfreeze.models.loading' -> 'models'; 'unfreeze' -> '__init__'."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def imports(path: Path) -> list[str]:
    module = "unfreeze." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.rsplit(".", node.level)[0]
                found.append(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.append(node.module)
                if node.module == "unfreeze":
                    found += [f"unfreeze.{alias.name}" for alias in node.names]
    return [name for name in found if name == "unfreeze" or name.startswith("unfreeze.")]


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_floor():
    missing = {part("unfreeze." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)) for p in modules()}
    assert missing <= set(FLOORS), sorted(missing - set(FLOORS))


def test_imports_point_down():
    upward = []
    for path in modules():
        here = part("unfreeze." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for name in imports(path):
            there = part(name)
            if FLOORS[there] > FLOORS[here]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not upward, "\n".join(upward)


def test_models_and_data_do_not_import_each_other_both_ways():
    """The two packages on floor 1 may not form a cycle (one may use the other)."""
    edges = set()
    for path in modules():
        here = part("unfreeze." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        edges |= {(here, part(name)) for name in imports(path) if part(name) != here}
    assert not {("models", "data"), ("data", "models")} <= edges


def test_nothing_below_the_command_line_imports_it():
    for path in modules():
        if path.name in ("cli.py", "__main__.py"):
            continue
        assert "unfreeze.cli" not in imports(path), path
