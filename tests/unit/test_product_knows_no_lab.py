"""The product (``services/``, ``shared/``, ``signup_cli/``) knows nothing of the lab.

The course's ways of handing the email on and the faults the lab injects live in ``lab/strategies/``, which
reaches the product through its public seams (``create_app``'s ``dispatcher``, ``before_commit`` and
``exception_handlers``; ``build_broker``'s ``handlers``). No product module imports from ``lab/`` or names
one of them: a deployment cannot be switched to a strategy that loses email, and a reader of the signup path
does not have to learn the course's mistakes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("services", "shared", "signup_cli")
MODULES = sorted(path for package in PRODUCT for path in (ROOT / package).rglob("*.py"))

# The names of the course's strategies, of the lab's knobs and of the faults it injects.
LAB_ONLY = re.compile(
    r"\bcourse\b|skip.?retry|fixed_delay|enqueue.?before.?commit|NoDispatcher|dispatch.?strategy"
    r"|task_process_in|fault_commit|fault_rollback|injected.?(rollback|fault)|(?-i:\bFaults\b)",
    re.IGNORECASE,
)


def lab_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lab"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "lab":
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("lab."):
            found.append((node.lineno, node.value))  # importlib.import_module("lab…") and the like
    return found


def test_the_product_has_modules_to_check() -> None:
    assert len(MODULES) > 40


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_product_module_imports_nothing_from_lab(path: Path) -> None:
    assert lab_imports(path) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_product_module_names_no_course_strategy_or_injected_fault(path: Path) -> None:
    lines = path.read_text().splitlines()
    named = [(n, line.strip()) for n, line in enumerate(lines, 1) if LAB_ONLY.search(line)]
    assert named == []
