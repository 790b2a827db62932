"""The documentation site: every page in the navigation, links and anchors resolve, PromQL examples hold.

The authoritative check is ``mkdocs build --strict`` (the nox ``docs`` session). The tests here
run without MkDocs, in the ordinary test session, so a page left out of the navigation, a broken
relative link or a stale query fails there too; the last test runs the strict build itself when
MkDocs is installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

from bakhmach_obs import conventions as c
from tests.conftest import need_binary

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))

#: Prometheus' and Alertmanager's own metrics the maintenance queries use (monitor the monitoring).
MONITORING_SELF_METRICS = frozenset({"prometheus_tsdb_head_series", "prometheus_engine_query_duration_seconds"})


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return []


def test_site_is_strict():
    config = _config()
    assert config["strict"] is True
    assert config["docs_dir"] == "docs"
    assert config["theme"]["name"] == "material"
    assert set(config["validation"].values()) == {"warn"}  # with strict: true, every warning fails the build


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = _nav_pages(_config()["nav"])
    assert len(nav) == len(set(nav)), "a page is listed twice"
    missing = sorted(set(PAGES) - set(nav))
    assert not missing, f"pages not in mkdocs.yml nav: {missing}"
    absent = sorted(set(nav) - set(PAGES))
    assert not absent, f"nav entries without a page: {absent}"


def _without_code(text: str) -> str:
    text = re.sub(r"^( *)```.*?^\1```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug of a heading (what mkdocs links ``#anchor`` to)."""
    text = re.sub(r"[`*_]", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M)}


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_and_anchors_resolve(page):
    path = DOCS / page
    for target in LINK.findall(_without_code(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.is_relative_to(DOCS.resolve()), f"{page}: {target} leaves docs/ (mkdocs cannot serve it)"
        assert linked.exists(), f"{page}: {target} does not exist"
        if anchor:
            assert linked.suffix == ".md", f"{page}: anchor on a non-page {target}"
            assert anchor in _anchors(linked), f"{page}: no heading #{anchor} in {linked.name}"


# --- PromQL on the operations pages -----------------------------------------------------------------

_KEYWORDS = frozenset(
    ("by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless")
)


def _promql_blocks() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        out += [(page, " ".join(b.split())) for b in re.findall(r"```promql\n(.*?)```", text, flags=re.S)]
    return out


PROMQL = _promql_blocks()


def _metric_names(expr: str) -> set[str]:
    """Series names an expression selects (strings, label matchers, ranges and groupings removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        following = expr[m.end() :].lstrip()
        if following.startswith("(") or m[0] in _KEYWORDS:
            continue  # a function or an operator
        names.add(m[0])
    return names


def test_operations_pages_have_promql_examples():
    pages = {page for page, _ in PROMQL}
    assert "maintenance.md" in pages
    assert len(PROMQL) >= 15


def test_promql_examples_use_only_names_that_exist():
    slo_records = {
        c.SLO_OBJECTIVE,
        c.SLO_ERROR_BUDGET,
        c.SLO_PERIOD_BURN_RATE,
        c.SLO_BUDGET_REMAINING,
        *(c.slo_sli_error(w) for w in c.SLO_WINDOWS),
    }
    known = c.known_series_names() | slo_records | MONITORING_SELF_METRICS
    for page, expr in PROMQL:
        unknown = _metric_names(expr) - known
        assert not unknown, f"{page}: {expr!r} uses names nothing emits: {sorted(unknown)}"


def test_metric_name_extraction_is_not_vacuous():
    assert _metric_names('sum by (job) (rate(http_server_request_duration_seconds_count{a="b"}[5m]))') == {
        "http_server_request_duration_seconds_count"
    }
    assert _metric_names("1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes") == {
        "node_memory_MemAvailable_bytes",
        "node_memory_MemTotal_bytes",
    }


def test_promql_examples_parse(tmp_path):
    """promtool parses every query (as a recording rule): a typo in a documented query fails here."""
    promtool = need_binary("promtool")
    groups = [
        {"name": "docs", "rules": [{"record": f"docs:example_{i}", "expr": e} for i, (_, e) in enumerate(PROMQL)]}
    ]
    rules = tmp_path / "docs.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(PROMQL)} rules found" in result.stdout


# --- the build -------------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path):
    """The real build, when MkDocs is installed (the docs extra; the nox docs session always runs it)."""
    import importlib.util

    from tests.conftest import need

    for module in ("mkdocs", "material"):  # the docs extra, which the nox tests session installs
        need(importlib.util.find_spec(module) is not None, f"{module} is not installed (pip install .[docs])")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in PAGES:
        stem = page[: -len(".md")]
        html = stem[: -len("index")] + "index.html" if stem.split("/")[-1] == "index" else stem + "/index.html"
        assert (tmp_path / "site" / html).is_file(), f"{page} was not built"
