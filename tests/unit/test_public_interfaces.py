"""Product code uses other packages through their public names only.

A private name (one leading underscore, or a module path segment with one) of another package may change or
go in any release: the packages the wheel ships (`services/`, `shared/`, `signup_cli/`, `lab/`,
`migrations/`) must not import one, reach one through an imported module or object, or call one that a
class of theirs inherits from another package. The project's own packages are exempt, and so are the few
standard library names documented as public (STDLIB_PUBLIC).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEEL = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
PRODUCT: list[str] = WHEEL["packages"]
OWN = frozenset({"services", "shared", "signup_cli", "lab", "migrations", "tests"})
STDLIB_PUBLIC = {
    # The os module documents it: exit at once, without cleanup handlers (services/worker/main.py, when a
    # stop hangs past its deadline).
    "os._exit": "documented in the os module",
}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_own(module: str) -> bool:
    return module.split(".")[0] in OWN


def private_uses(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, dotted name) of each private name of another package that ``tree`` imports or uses."""
    found: list[tuple[int, str]] = []
    imported: dict[str, str] = {}  # local name → what it names in another package
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not is_own(alias.name):
                    found += _private_path(node.lineno, alias.name)
                    local = alias.asname or alias.name.split(".")[0]
                    imported[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if is_own(node.module) or node.module == "__future__":
                continue
            found += _private_path(node.lineno, node.module)
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if is_private(alias.name):
                    found.append((node.lineno, name))
                imported[alias.asname or alias.name] = name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            base = _dotted(node.value, imported)
            if base is not None and not any(is_private(part) for part in base.split(".")):
                found.append((node.lineno, f"{base}.{node.attr}"))
    found += _inherited(tree, imported)
    return sorted({(line, name) for line, name in found if name not in STDLIB_PUBLIC})


def _private_path(line: int, module: str) -> list[tuple[int, str]]:
    parts = module.split(".")
    return [(line, ".".join(parts[: i + 1])) for i, part in enumerate(parts) if is_private(part)][:1]


def _dotted(node: ast.expr, imported: dict[str, str]) -> str | None:
    """``a.b.c`` as the dotted name it has in another package, if ``a`` was imported from one."""
    if isinstance(node, ast.Name):
        return imported.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, imported)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _inherited(tree: ast.Module, imported: dict[str, str]) -> list[tuple[int, str]]:
    """``self._x`` and ``super()._x`` in a class derived from another package's, ``_x`` not defined by the
    module's own classes in its line."""
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    found = []
    for cls in classes.values():
        foreign, own = _lineage(cls, classes, imported)
        if foreign is None:
            continue
        defined = set().union(*(_defined(ancestor) for ancestor in own))
        for node in ast.walk(cls):
            if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
                continue
            on_self = _on_self(node)
            on_super = (
                isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name)
                and node.value.func.id == "super"
            )
            if on_super or (on_self and node.attr not in defined):
                found.append((node.lineno, f"{foreign}.{node.attr}"))
    return found


def _lineage(
    cls: ast.ClassDef, classes: dict[str, ast.ClassDef], imported: dict[str, str]
) -> tuple[str | None, list[ast.ClassDef]]:
    """(the other package's base class ``cls`` derives from, or None; ``cls`` and its own ancestors)."""
    own, foreign = [cls], None
    for base in cls.bases:
        name = _dotted(base, imported)
        if name is not None:
            foreign = foreign or name
        elif isinstance(base, ast.Name) and base.id in classes and classes[base.id] is not cls:
            theirs, ancestors = _lineage(classes[base.id], classes, imported)
            foreign, own = foreign or theirs, own + ancestors
    return foreign, own


def _on_self(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id == "self"


def _defined(cls: ast.ClassDef) -> set[str]:
    """The names a class body defines, and the ``self.x`` its methods assign."""
    names: set[str] = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _on_self(node):
            names.add(node.attr)
    return names


def offenders() -> list[str]:
    found = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            found += [f"{path.relative_to(ROOT)}:{line}: {name}" for line, name in private_uses(tree)]
    return found


def test_product_code_uses_no_private_name_of_another_package() -> None:
    found = offenders()
    assert not found, f"{len(found)} private name(s) of other packages in product code:\n" + "\n".join(found)


SAMPLE = """
import os
import _cffi_backend
import argon2.low_level as low
from argon2.low_level import _core
from opentelemetry.util._once import Once
from opentelemetry import trace
from dramatiq.brokers.redis import RedisBroker
from shared.broker import _own
from . import _relative

class Broker(RedisBroker):
    def __init__(self):
        self._mine = 1
    def _helper(self):
        return self._mine + self._helper.__name__.count("x")
    def enqueue(self):
        self._helper()
        super()._hidden()
        return self._should_do_maintenance("enqueue")

class Child(Broker):
    def go(self):
        return self._mine, self._dispatch

trace._TRACER_PROVIDER = None
low.core._x
os._exit(0)
os._wrap_close
shared_thing._private
"""


def test_each_kind_of_private_use_is_found_and_public_and_own_names_are_not() -> None:
    found = [name for _, name in private_uses(ast.parse(SAMPLE))]
    assert found == [
        "_cffi_backend",
        "argon2.low_level._core",
        "opentelemetry.util._once",
        "dramatiq.brokers.redis.RedisBroker._hidden",
        "dramatiq.brokers.redis.RedisBroker._should_do_maintenance",
        "dramatiq.brokers.redis.RedisBroker._dispatch",
        "opentelemetry.trace._TRACER_PROVIDER",
        "argon2.low_level.core._x",
        "os._wrap_close",
    ]
