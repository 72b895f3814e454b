"""The layout rules: the core stands alone, and every backend module says what it models.

The core (``difftest/``) reaches backends, generators and report writers only through the
plugin host, never by importing them, so that the built-ins register exactly as a third
party's plugin would (STACK.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "difftest"
IMPLS = ROOT / "impls"
PLUGIN_PACKAGES = ("impls", "strategies", "reports")

CORE_MODULES = sorted(CORE.rglob("*.py"))
BACKEND_MODULES = sorted(p for p in IMPLS.glob("*.py") if p.name != "__init__.py")


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every import statement, and for ``importlib.import_module`` /
    ``__import__`` called with a literal name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
    return found


def test_there_is_a_core_to_check():
    assert CORE / "__init__.py" in CORE_MODULES and CORE / "machine.py" in CORE_MODULES


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_plugin_package(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for line, module in imported_modules(tree)
        if module.split(".")[0] in PLUGIN_PACKAGES
    ]
    assert not bad, "the core must reach plugins only through the plugin host:\n" + "\n".join(bad)


def test_the_import_check_sees_every_form():
    source = (
        "import impls.arm32\n"
        "from strategies import seeded\n"
        "def f():\n"
        "    from reports.builtin import x\n"
        "    importlib.import_module('impls.alpha')\n"
        "from . import machine\n"
        "import difftest.impls_like\n"
    )
    found = sorted(imported_modules(ast.parse(source)))
    assert found == [(1, "impls.arm32"), (2, "strategies"), (4, "reports.builtin"),
                     (5, "impls.alpha"), (7, "difftest.impls_like")]


def test_there_are_backend_modules_to_check():
    assert IMPLS / "arm32.py" in BACKEND_MODULES and IMPLS / "alpha.py" in BACKEND_MODULES


@pytest.mark.parametrize("path", BACKEND_MODULES, ids=lambda p: p.name)
def test_backend_module_starts_with_a_description(path):
    source = path.read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source, filename=str(path)), clean=True)
    first = source.lstrip("\ufeff").lstrip()
    if docstring is None:
        # A comment block is fine too, if it comes first (a shebang or coding line may precede).
        assert first.startswith("#"), f"{path.name} starts with neither a docstring nor a comment"
        comment = [line for line in first.splitlines() if line.startswith("#")]
        text = " ".join(line.lstrip("#!").strip() for line in comment)
    else:
        assert first.startswith(('"""', "'''", 'r"""', "#")), f"{path.name}: code before the docstring"
        text = docstring
    assert text.strip(), f"{path.name}: the description is empty"


def _shell_blocks(text: str) -> list[str]:
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.startswith("```sh"):
            inside, current = True, []
        elif line.startswith("```") and inside:
            inside = False
            blocks.append("\n".join(current).strip())
        elif inside:
            current.append(line)
    return blocks


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = _shell_blocks(readme)
    assert len(blocks) >= 2, "README must show the install+run and the install+test commands"
    main_command, test_command = blocks[0], blocks[1]
    assert main_command.endswith("difftest fuzz")
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines(), "the README's test command and .ci/run drifted apart"


def test_the_modules_kept_on_one_xdist_worker_exist():
    from conftest import ONE_WORKER_MODULES  # tests/conftest.py: a renamed module would silently split

    assert ONE_WORKER_MODULES and all((ROOT / module).is_file() for module in ONE_WORKER_MODULES)
