"""Test modules import helpers from ``tests/support.py`` only, besides two tools: the browser driver
(``tests/e2e/cdp.py``) and the certificate authority of the TLS tests (``tests/certificates.py``).

A helper imported from another test module, or from a conftest, breaks unrelated tests when that module
changes; one support module keeps them where a reader looks for them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ALLOWED = {"tests.support", "tests.e2e.cdp", "tests.certificates"}
MODULES = sorted(path for path in TESTS.rglob("*.py") if path.name != "support.py")


def imported_test_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    found += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    return [name for name in found if name.split(".")[0] == "tests" and name not in ALLOWED]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TESTS)))
def test_a_test_module_imports_helpers_from_the_support_module_only(path: Path) -> None:
    assert imported_test_modules(path) == []
