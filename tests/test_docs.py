"""Docs cannot drift: generated pages match the code, doc examples run."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bakhmach_obs
from bakhmach_obs import _docgen

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.mark.parametrize("page", sorted(_docgen.PAGES))
def test_generated_page_is_current(page):
    committed = (DOCS / page).read_text(encoding="utf-8")
    assert committed == _docgen.PAGES[page](), f"docs/{page} is stale: run python -m bakhmach_obs._docgen"


def test_conventions_page_lists_every_metric_attribute_and_field():
    text = (DOCS / "conventions.md").read_text(encoding="utf-8")
    for m in bakhmach_obs.conventions.METRICS:
        assert f"`{m.name}`" in text
    for a in bakhmach_obs.conventions.SPAN_ATTRIBUTES:
        assert f"`{a.key}`" in text
    for f in bakhmach_obs.conventions.LOG_FIELDS:
        assert f"`{f.name}`" in text


MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(bakhmach_obs.__path__, "bakhmach_obs.")
    if m.name != "bakhmach_obs.pytest_plugin"
)


@pytest.mark.parametrize("name", ["bakhmach_obs", *MODULES])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


DOC_PAGES = sorted(p for p in [*DOCS.rglob("*.md"), ROOT / "README.md"] if _python_blocks(p))


@pytest.mark.parametrize("page", DOC_PAGES, ids=[str(p.relative_to(ROOT)) for p in DOC_PAGES])
def test_markdown_python_examples_run(page, tmp_path):
    """Each page's ```python blocks run in order, in a fresh interpreter, and exit 0."""
    script = tmp_path / "example.py"
    script.write_text("\n".join(_python_blocks(page)), encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api_is_explicit_and_sorted():
    names = bakhmach_obs.__all__
    assert names == sorted(names, key=lambda n: (n.startswith("_"), n.lower())) or names == sorted(names)
    for name in names:
        assert hasattr(bakhmach_obs, name), name


def _shell_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, flags=re.S)]


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    demo, test = _shell_blocks(readme)
    assert demo.endswith("bakhmach-obs demo")
    assert "nox" in test
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test in ci.splitlines()
    assert "BAKHMACH_OBS_REQUIRE_SERVICES=1" in ci
