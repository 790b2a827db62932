"""Fuzzing the SLO file parser and the rules generated from what it accepts.

Whatever the text, :func:`~bakhmach_obs.slo.parse_slos` either returns SLOs whose generated rules use
only the convention's names, or raises :class:`~bakhmach_obs.slo.SLOFileError` (a
:class:`~bakhmach_obs.errors.ConfigurationError`) naming the source, a line and the field; never a
``KeyError``, ``TypeError``, ``OverflowError`` or a PyYAML error. The budget maths already has its
properties in ``tests/test_slo.py``; here only the input validation of the maths is fuzzed.
"""

from __future__ import annotations

import json
import math
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bakhmach_obs import conventions as c
from bakhmach_obs.errors import ConfigurationError
from bakhmach_obs.rules import BURN_RATE_WINDOWS, alert_names, generate, render
from bakhmach_obs.slo import (
    SLI_SOURCES,
    SLO,
    SLOFileError,
    burn_rate,
    error_budget,
    error_ratio,
    load_slos,
    parse_duration,
    parse_slos,
)

from .conftest import need_binary
from .test_rules import metric_names

# Modest settings: the whole file runs in a few seconds. No example database.
PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SOURCE = "fuzz/slo.yaml"

# --- what the parser may answer -------------------------------------------------------------------------


def _check_error(exc: BaseException, text: str, source: str = SOURCE) -> SLOFileError:
    """The only acceptable failure: an SLOFileError naming the source, a line of the text and the field."""
    assert isinstance(exc, SLOFileError), f"{type(exc).__name__}: {exc}"
    assert isinstance(exc, ConfigurationError)
    message = str(exc)
    assert exc.source == source
    assert 1 <= exc.line <= len(_LINE_BREAK.findall(text)) + 2, (exc.line, message)
    assert isinstance(exc.field, str) and exc.field
    assert message.startswith(f"{source}:{exc.line}: {exc.field}: invalid value "), message
    assert "; accepted: " in message
    return exc


_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what YAML counts as a new line
_STRING = re.compile(r'"(?:\\.|[^"\\])*"')


def _recorded_names(slo: SLO) -> set[str]:
    windows = {*c.SLO_WINDOWS, slo.window, *(x for b in BURN_RATE_WINDOWS for x in (b.short_window, b.long_window))}
    fixed = {c.SLO_SLI_EVENTS_RATE, c.SLO_SLI_ERROR_EVENTS_RATE, c.SLO_OBJECTIVE, c.SLO_ERROR_BUDGET}
    return fixed | {c.SLO_PERIOD_BURN_RATE, c.SLO_BUDGET_REMAINING} | {c.slo_sli_error(w) for w in windows}


def _check_rules(slos: list[SLO]) -> None:
    """Every SLO the parser accepts generates rules whose names all come from the convention."""
    assert slos and all(isinstance(s, SLO) for s in slos)
    assert len({s.name for s in slos}) == len(slos)
    doc = generate(slos, catalogue_alerts=False)
    assert [g["name"] for g in doc["groups"]] == [f"bakhmach_slo_{s.name}" for s in slos]
    known = c.known_series_names()
    alerts = set(alert_names(catalogue_alerts=False))
    for slo, group in zip(slos, doc["groups"], strict=True):
        allowed = _recorded_names(slo)
        records = {r["record"] for r in group["rules"] if "record" in r}
        assert records <= allowed, records - allowed
        assert {r["alert"] for r in group["rules"] if "alert" in r} <= alerts
        for rule in group["rules"]:
            names = metric_names(_STRING.sub('""', rule["expr"]))  # a "}" in a label value is not a matcher's end
            assert names <= known | allowed, (rule, names - known - allowed)
            assert rule["labels"][c.LABEL_SLO] == slo.name
            assert rule["labels"][c.LABEL_SLO_SERVICE] == slo.service
    # and the YAML text of the rules reads back to the same document
    assert yaml.safe_load(render("prometheus", slos, catalogue_alerts=False)) == doc


def _parse(text: str) -> list[SLO] | None:
    try:
        slos = parse_slos(text, source=SOURCE)
    except Exception as exc:  # the property is about which exceptions escape
        _check_error(exc, text)
        return None
    _check_rules(slos)
    return slos


# --- arbitrary text ---------------------------------------------------------------------------------------

# pieces of YAML, valid and not, that the parser must survive in any order
_TOKENS = [
    "slos:", "defaults:", "version: 1", "version: 2", "\n", "\n  ", "\n  - ", "\n    ", "- ", "  ", ": ", ":", "\t",
    "name: api", "service: api", "target: 0.999", "target: 99.9%", "target: 1e400", "target: .nan", "sli: latency",
    "sli: availability", "sli: {kind: latency, threshold: 500ms}", "sli: {kind: [a]}", "kind: latency",
    "threshold: 0.3", "window: 7d", "window: 0s", "selector: {namespace: shop}", "feature: /orders",
    "[", "]", "{", "}", ",", "?", "? [a]", "&a ", "*a", "*b", "<<: *a", "!!python/object:os.system", "!!binary x",
    "!!float abc", "!!int x", "!!timestamp 2001-13-45", "2001-13-45", "2001-02-30", "!!set {a}", "!!omap [a]",
    "!!str", "!local x", "%YAML 1.1\n---\n", "---", "...", "'", '"', '"\\ud800"', '"\\x00"', "\x00", "\x85", "\ufeff",
    "#", "|", ">", "~", "null", "yes", "0x1F", "0o17", "1_000", "9" * 400, "-", "é", "😀",
]  # fmt: skip
YAMLISH = st.lists(st.sampled_from(_TOKENS) | st.text(max_size=8), max_size=40).map("".join)


@PROPERTY
@given(st.text(max_size=400) | YAMLISH)
def test_any_text_parses_or_fails_with_a_located_configuration_error(text):
    _parse(text)


# --- structurally valid documents, random values in every field ------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
# raw YAML for a value: junk the constructor chokes on, and values of every type
_JUNK = [
    "2001-13-45", "2001-02-30 25:61:00", "!!timestamp x", "!!float abc", "!!int 1.5", "!!binary '%%%'", "!!bool 2",
    "!!python/name:os.system", "!!python/object/apply:os.system [echo]", "!!set {a: 1}", "!!omap [a, b]",
    "!!omap [{a: 1}, {a: 2}]", "!!pairs [a]", "{[a]: b}", "{{a: 1}: b}", "[*undefined]", "&x [*x]", "&y {a: *y}",
    "!!str", "!custom x", "!!null x", "1e400", "-1e400", ".nan", ".inf", "-.inf", "0x" + "f" * 60, "9" * 300,
    "9" * 400, "9" * 5000, "'99.9%'", "'1e400%'", "'nan%'", "'%'", "100%", "0%", "-5%", "'500ms'", "'1e-05'", "'0ms'",
    "''", "' '", "'\\'", '"\\ud83d"', '"\\t\\r\\n"', '"a\\"b"', "'a\\b'", "~", "yes", "no", "0.0", "1", "-0.5",
]  # fmt: skip
_VALID = {
    "service": ["api", "checkout", "with space", "ünïcode", "'quoted: colon'", '"tab\\there"'],
    "target": ["0.999", "0.99", "99.9%", "0.5", "'95%'", "0.9999999999999999", "1e-3"],
    "threshold": ["0.3", "0.5", "500ms", "1s", "1e-05", "'2.5'", "1h"],
    "feature": ["/orders", "database", "charge", "/v1/{id}", "'}\"'"],
    "window": ["30d", "7d", "1h30m", "28d", "1y", "90m"],
    "selector": ["{namespace: shop}", "{job: api, env: prod}", "{a: 1}", "{q: '\"}\\'}"],
    "description": ["free text", "'quoted: colon'", "|\n      two\n      lines"],
    "version": ["1"],
}
_INVALID = {
    "name": ["-bad", "x" * 101, "''", "with space", "1.5", "[a]"],
    "service": ["''", "' '", "1", "[a]", "{a: b}"],
    "target": ["1", "1.0", "0", "100%", "-0.5", "abc", "'%'", "1e400"],
    "kind": ["bogus", "Latency", "[latency]", "{kind: latency}"],
    "source": ["bogus", "health", "function", "[http]"],
    "threshold": ["0", "-1", "abc", "'0ms'", ".inf", ".nan", "true"],
    "feature": ["''", "5", "[a]"],
    "window": ["0s", "5", "1.5h", "-1d", "30 d", "30D"],
    "selector": ["{}", "{__name__: x}", "{0bad: x}", "{a: true}", "{a: [b]}", "[a]", "x"],
    "description": ["''", "5", "{a: b}"],
    "version": ["2", "'1'", "1.0", "[1]"],
}
NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,12}", fullmatch=True).filter(lambda n: ":" not in n)


def _rarely(n: int) -> st.SearchStrategy[bool]:
    """True once in ``n`` draws."""
    return st.sampled_from([False] * (n - 1) + [True])  # shrinks towards False, the valid form


@st.composite
def _value(draw: st.DrawFn, field: str) -> str:
    """Raw YAML for ``field``: mostly a valid value, sometimes an invalid one or anything at all."""
    if not draw(_rarely(10)):
        return draw(NAMES if field == "name" else st.sampled_from(_VALID[field]))
    if draw(st.booleans()):
        return draw(st.sampled_from(_INVALID[field]))
    return draw(st.sampled_from(_JUNK) | JSON.map(json.dumps))  # JSON is YAML flow syntax


@st.composite
def _entries(draw: st.DrawFn, fields: dict[str, int], indent: str) -> str:
    """``key: value`` lines in random order: each field present once in ``fields[key]`` draws (1: always,
    else 1 - 1/n), rarely an unknown key or a repeated one."""
    lines = [f"{indent}{key}: {draw(_value(key))}" for key, n in fields.items() if n == 1 or not draw(_rarely(n))]
    if draw(_rarely(20)):
        lines.append(f"{indent}bogus: {draw(_value('description'))}")
    lines = draw(st.permutations(lines))
    if lines and draw(_rarely(20)):
        lines.append(lines[0])
    return "\n".join(lines)


@st.composite
def _sli(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(sorted(SLI_SOURCES)))
    if draw(_rarely(8)):
        kind = draw(st.sampled_from(_INVALID["kind"]) | st.sampled_from(_JUNK))
    if kind in ("availability", "success_ratio") and draw(_rarely(3)):
        return kind  # the short form
    lines = [f"      kind: {kind}"] if not draw(_rarely(20)) else []
    if draw(st.booleans()):
        sources = SLI_SOURCES.get(kind, ("http",))
        source = draw(st.sampled_from(sources) if not draw(_rarely(8)) else st.sampled_from(_INVALID["source"]))
        lines.append(f"      source: {source}")
    if (kind == "latency") != draw(_rarely(10)):
        lines.append(f"      threshold: {draw(_value('threshold'))}")
    return "\n" + "\n".join(draw(st.permutations(lines))) if lines else "{}"


# how often each field of an SLO is left out: 1 never (checked by _rarely(20) below), n: once in n
_SLO_FIELDS = {"name": 20, "target": 20, "service": 5, "feature": 2, "window": 2, "selector": 4, "description": 2}


@st.composite
def documents(draw: st.DrawFn) -> str:
    parts = []
    if draw(st.booleans()):
        parts.append(f"version: {draw(_value('version'))}")
    if draw(st.booleans()):
        body = draw(_entries({"service": 4, "window": 2, "selector": 3}, "  "))
        parts.append("defaults:" + ("\n" + body if body else " {}"))
    if not draw(_rarely(20)):
        items = []
        for i in range(0 if draw(_rarely(20)) else draw(st.integers(1, 3))):
            body = draw(_entries(_SLO_FIELDS, "    "))
            if not draw(_rarely(4)):  # mostly distinct names (a repeated one is refused)
                body = body.replace("    name: ", f"    name: s{i}", 1)
            if not draw(_rarely(20)):
                body += f"\n    sli: {draw(_sli())}"
            items.append("  - " + body.strip() if body.strip() else "  - {}")
        parts.append("slos:" + ("\n" + "\n".join(items) if items else draw(st.sampled_from([" []", "", " x"]))))
    if draw(_rarely(20)):
        parts.append(f"bogus: {draw(_value('description'))}")
    return "\n".join(draw(st.permutations(parts))) + "\n"


_KNOWN_FIELD = re.compile(r"^(\(syntax\)|\(top level\)|version|bogus|defaults(\.\w+)?|slos(\[\d+\](\.\w+(\.\w+)?)?)?)$")


@PROPERTY
@given(documents())
def test_every_field_with_any_value_parses_or_names_the_line_and_the_field(text):
    try:
        slos = parse_slos(text, source=SOURCE)
    except Exception as exc:
        error = _check_error(exc, text)
        assert _KNOWN_FIELD.match(error.field), error.field
        event("refused: " + re.sub(r"\[\d+\]", "[i]", error.field))
        return
    event(f"accepted {len(slos)} SLO(s)")
    _check_rules(slos)


@settings(max_examples=60, deadline=None, database=None)
@given(st.binary(max_size=200) | documents().map(str.encode))
def test_load_slos_reads_any_file_or_fails_with_a_configuration_error(tmp_path_factory, data):
    path: Path = tmp_path_factory.mktemp("slo") / "slo.yaml"
    path.write_bytes(data)
    try:
        slos = load_slos(path)
    except Exception as exc:  # only an SLOFileError may escape
        _check_file_error(exc, path, data)
        return
    _check_rules(slos)


def _check_file_error(exc: BaseException, path: Path, data: bytes) -> None:
    assert isinstance(exc, SLOFileError), repr(exc)
    if exc.line == 0:  # not UTF-8: the file, not a line, is named
        assert exc.field == "(file)" and str(exc).startswith(f"{path}:0: (file): ")
        return
    _check_error(exc, data.decode("utf-8"), source=str(path))


# --- SLOs built in code: the generated rules are valid PromQL whatever the strings ---------------------

# Any text but lone surrogates (not UTF-8); NEL/LS/PS included: bakhmach_obs._yaml writes strings
# holding them double-quoted, where they survive the round trip (single-quoted they fold to a space).
LABEL_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",)) | st.sampled_from("\x85\u2028\u2029"), min_size=1, max_size=20
).filter(str.strip)


@st.composite
def valid_slos(draw: st.DrawFn) -> SLO:
    sli = draw(st.sampled_from(sorted(SLI_SOURCES)))
    return SLO(
        name=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
        target=draw(st.floats(min_value=1e-6, max_value=1 - 1e-6)),
        service=draw(LABEL_TEXT),
        sli=sli,
        source=draw(st.sampled_from(SLI_SOURCES[sli])),
        feature=draw(st.none() | LABEL_TEXT),
        threshold=draw(st.floats(min_value=1e-6, max_value=1e6)) if sli == "latency" else None,
        window=draw(st.sampled_from(["30d", "28d", "7d", "1h30m", "90m", "1y"])),
        selector=draw(
            st.none()
            | st.dictionaries(
                st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), LABEL_TEXT, min_size=1, max_size=3
            )
        ),
        description=draw(LABEL_TEXT),
    )


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_slos(), min_size=1, max_size=4, unique_by=lambda s: s.name))
def test_promtool_accepts_the_rules_of_any_valid_slo(tmp_path_factory, slos):
    import subprocess

    promtool = need_binary("promtool")
    _check_rules(slos)
    path = tmp_path_factory.mktemp("rules") / "rules.yml"
    text = render("prometheus", slos)
    assert yaml.safe_load(text) == generate(slos)  # every label value reads back exactly
    path.write_text(text, encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the maths refuses bad input with ValueError only -------------------------------------------------

ANY = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10), st.binary(max_size=4),
    st.decimals(), st.lists(st.integers(), max_size=2), st.just(timedelta(seconds=-1)), st.just(10**400),
)  # fmt: skip


@PROPERTY
@given(st.text(max_size=30) | st.from_regex(r"(\d{1,4}(ms|[ywdhms])){1,4}", fullmatch=True) | ANY)
def test_parse_duration_is_positive_seconds_or_a_value_error(text):
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert isinstance(text, str) and math.isfinite(seconds) and seconds > 0


@PROPERTY
@given(target=ANY | st.floats(0, 1), window=ANY | st.sampled_from(["30d", "7d", "0s", "1h"]))
def test_error_budget_answers_a_budget_within_the_window_or_a_value_error(target, window):
    try:
        budget = error_budget(target, window)
    except (ValueError, TypeError):  # a type outside the signature may be a TypeError, as for any function
        return
    assert isinstance(target, (int, float)) and 0 < target < 1
    assert timedelta(0) <= budget


@PROPERTY
@given(good=st.integers(0, 10**9) | st.floats(allow_nan=True), total=st.integers(0, 10**9) | st.floats(allow_nan=True),
       target=st.floats(allow_nan=True))  # fmt: skip
def test_ratio_and_burn_rate_refuse_impossible_counts_with_value_error(good, total, target):
    try:
        ratio = error_ratio(good, total)
    except ValueError:
        assert good < 0 or total < 0 or good > total or math.isnan(good) or math.isnan(total)
        return
    assert 0.0 <= ratio <= 1.0 or math.isnan(ratio)  # inf/inf is the one NaN left
    try:
        rate = burn_rate(ratio, target)
    except ValueError:
        assert not 0 < target < 1 or math.isnan(ratio)
        return
    assert rate >= 0


def test_the_structured_strategy_reaches_both_outcomes():
    """Not vacuous: the generator produces valid files and each kind of error."""
    ok = parse_slos(
        "version: 1\ndefaults:\n  service: api\nslos:\n  - name: api\n    target: 99.9%\n"
        "    sli:\n      kind: latency\n      threshold: 500ms\n",
        source=SOURCE,
    )
    _check_rules(ok)
    with pytest.raises(SLOFileError, match=r"^fuzz/slo.yaml:4: slos\[0\].target: "):
        parse_slos("slos:\n  - name: a\n    service: a\n    target: 1e400\n    sli: latency\n", source=SOURCE)
