"""The SQL statement scanner: summaries, parameterisation, the cache, and properties over literals."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakhmach_obs import _sql
from bakhmach_obs._sql import OPERATION_OTHER, OPERATIONS, SCAN_LIMIT, parameterize, summarize

# --- summarize: examples ---------------------------------------------------------------------------

STANDARD_CASES = [
    ("SELECT * FROM users", ("SELECT", "users")),
    ("select id from public.users where id = $1", ("SELECT", "public.users")),
    ('SELECT * FROM "Order Items" oi JOIN x ON 1=1', ("SELECT", "Order Items")),
    ('SELECT * FROM "public"."users"', ("SELECT", "public.users")),
    ("SELECT * FROM [dbo].[users]", ("SELECT", "dbo.users")),
    ("SELECT * FROM a, b", ("SELECT", "a")),
    ("SELECT 1", ("SELECT", "")),
    ("SELECT extract(year FROM ts) FROM events", ("SELECT", "events")),
    ("SELECT (SELECT max(x) FROM inner_t) FROM outer_t", ("SELECT", "outer_t")),
    ("SELECT * FROM (SELECT 1) sub", ("SELECT", "")),
    ("SELECT * FROM generate_series(1, 3)", ("SELECT", "")),
    ("SELECT * FROM LATERAL f(x)", ("SELECT", "")),
    ("SELECT 'FROM secret' FROM t", ("SELECT", "t")),
    ("SELECT $$ FROM secret $$ FROM t", ("SELECT", "t")),
    ("SELECT $q$ FROM secret $q$ FROM t", ("SELECT", "t")),
    ("SELECT E'\\' FROM secret' FROM t", ("SELECT", "t")),
    ("SELECT 'a\\' FROM t", ("SELECT", "t")),  # standard strings: a backslash is a character
    ("/* FROM secret */ SELECT x -- FROM secret\n FROM t", ("SELECT", "t")),
    ("(SELECT 1 FROM a) UNION (SELECT 2 FROM b)", ("SELECT", "a")),
    ("SELECT 1; SELECT * FROM t", ("SELECT", "")),
    ("INSERT INTO orders (id) VALUES (1)", ("INSERT", "orders")),
    ("insert into s.orders values (1)", ("INSERT", "s.orders")),
    ("INSERT OR REPLACE INTO kv VALUES (1)", ("INSERT", "kv")),
    ("REPLACE INTO kv VALUES (1)", ("REPLACE", "kv")),
    ("UPDATE accounts SET a = 1", ("UPDATE", "accounts")),
    ("UPDATE ONLY accounts SET a = 1", ("UPDATE", "accounts")),
    ("UPDATE OR IGNORE t SET a = 1", ("UPDATE", "t")),
    ("DELETE FROM sessions WHERE id = 1", ("DELETE", "sessions")),
    ("DELETE FROM ONLY sessions", ("DELETE", "sessions")),
    ("MERGE INTO tgt USING src ON tgt.id = src.id", ("MERGE", "tgt")),
    ("WITH x AS (SELECT * FROM a) SELECT * FROM x", ("SELECT", "x")),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r", ("SELECT", "r")),
    ("WITH x AS (SELECT 1) INSERT INTO log SELECT * FROM x", ("INSERT", "log")),
    ("WITH x AS (SELECT 1) UPDATE t SET a = 1", ("UPDATE", "t")),
    ("WITH x AS (SELECT 1)", ("WITH", "")),
    ("CREATE TABLE t (id int)", ("CREATE", "t")),
    ("CREATE TEMPORARY TABLE IF NOT EXISTS s.t (id int)", ("CREATE", "s.t")),
    ("CREATE OR REPLACE VIEW v AS SELECT 1", ("CREATE", "")),
    ("CREATE INDEX i ON t (a)", ("CREATE", "")),
    ("ALTER TABLE IF EXISTS ONLY t ADD COLUMN c int", ("ALTER", "t")),
    ("DROP TABLE IF EXISTS t, u", ("DROP", "t")),
    ("TRUNCATE t", ("TRUNCATE", "t")),
    ("TRUNCATE TABLE ONLY t", ("TRUNCATE", "t")),
    ("COPY t (a, b) FROM STDIN", ("COPY", "t")),
    ("TABLE t", ("TABLE", "t")),
    ("BEGIN", ("BEGIN", "")),
    ("commit", ("COMMIT", "")),
    ("ROLLBACK", ("ROLLBACK", "")),
    ("START TRANSACTION", ("START", "")),
    ("SAVEPOINT sp1", ("SAVEPOINT", "")),
    ("CALL do_it(1)", ("CALL", "")),
    ("EXPLAIN SELECT * FROM t", ("EXPLAIN", "")),
    ("SET search_path = x", ("SET", "")),
    ("SHOW server_version", ("SHOW", "")),
    ("PRAGMA table_info(t)", ("PRAGMA", "")),
    ("VACUUM", ("VACUUM", "")),
    ("frobnicate everything", (OPERATION_OTHER, "")),
    ("42", (OPERATION_OTHER, "")),
    ("'SELECT'", (OPERATION_OTHER, "")),
    ("", ("", "")),
    ("   \n\t", ("", "")),
    ("-- only a comment", ("", "")),
    ("/* unterminated comment", ("", "")),
    ("SELECT * FROM " + "a" * 64, ("SELECT", "a" * 64)),
    ("SELECT * FROM " + "a" * 65, ("SELECT", "")),
    ("SELECT * FROM a.b.c", ("SELECT", "a.b.c")),
    ("SELECT * FROM a.b.c.d", ("SELECT", "")),
    ("SELECT * FROM a.", ("SELECT", "")),
    ('SELECT * FROM "we""ird"', ("SELECT", "")),
    ('SELECT * FROM "new\nline"', ("SELECT", "")),
    ('SELECT * FROM "unterminated', ("SELECT", "")),
    ('SELECT * FROM ""', ("SELECT", "")),
    ("SELECT * FROM t$1", ("SELECT", "t$1")),
    ("SELECT * FROM таблица", ("SELECT", "таблица")),
]


@pytest.mark.parametrize(("sql", "expected"), STANDARD_CASES)
def test_summarize_standard(sql, expected):
    assert summarize(sql) == expected


MYSQL_CASES = [
    ("SELECT * FROM `shop`.`orders`", ("SELECT", "shop.orders")),
    ("SELECT 'it\\'s FROM secret' FROM t", ("SELECT", "t")),
    ('SELECT "FROM secret" FROM t', ("SELECT", "t")),
    ("SELECT 1 # FROM secret\nFROM t", ("SELECT", "t")),
    ("INSERT IGNORE INTO t VALUES (1)", ("INSERT", "t")),
    ("INSERT LOW_PRIORITY t VALUES (1)", ("INSERT", "t")),
    ("UPDATE LOW_PRIORITY IGNORE t SET a = 1", ("UPDATE", "t")),
    ("DELETE LOW_PRIORITY QUICK FROM t", ("DELETE", "t")),
    ("DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id", ("DELETE", "t1")),
    ("REPLACE INTO t VALUES (1)", ("REPLACE", "t")),
    ("CALL proc(1, 'x')", ("CALL", "")),
    ('UPDATE "t" SET a = "v"', ("UPDATE", "t")),  # "t" where only a name can stand is a name
]


@pytest.mark.parametrize(("sql", "expected"), MYSQL_CASES)
def test_summarize_mysql(sql, expected):
    assert summarize(sql, mysql=True) == expected


def test_summarize_non_strings():
    assert summarize(None) == ("", "")  # type: ignore[arg-type]
    assert summarize(b"SELECT 1") == ("", "")  # type: ignore[arg-type]
    assert summarize(["SELECT 1"]) == ("", "")  # type: ignore[arg-type]


def test_summarize_caches_and_stays_bounded(monkeypatch):
    monkeypatch.setattr(_sql, "_CACHE", {})
    sql = "SELECT * FROM cached_table"
    first = summarize(sql)
    assert summarize(sql) is first
    for i in range(3 * _sql._CACHE_SIZE):
        summarize(f"SELECT * FROM t{i}")
    assert len(_sql._CACHE) <= _sql._CACHE_SIZE
    assert "SELECT * FROM t0" not in _sql._CACHE  # the oldest went first
    assert f"SELECT * FROM t{3 * _sql._CACHE_SIZE - 1}" in _sql._CACHE


def test_long_statements_are_not_cached_and_scan_is_bounded(monkeypatch):
    monkeypatch.setattr(_sql, "_CACHE", {})
    long_select = "SELECT " + ", ".join(f"c{i}" for i in range(SCAN_LIMIT)) + " FROM far_away"
    assert summarize(long_select) == ("SELECT", "")  # FROM lies beyond the scan window
    long_insert = "INSERT INTO near (a) VALUES " + ", ".join(["(1)"] * SCAN_LIMIT)
    assert summarize(long_insert) == ("INSERT", "near")
    assert _sql._CACHE == {}


# --- parameterize: examples ------------------------------------------------------------------------

PARAMETERIZE_CASES = [
    ("SELECT * FROM t WHERE a = 'x' AND b = 42", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("SELECT 'it''s', 1.5e-3, .5, 0x1F, 0b101, X'0aff', B'0101', N'n'", "SELECT ?, ?, ?, ?, ?, ?, ?, ?"),
    ("SELECT E'a\\'b', U&'d\\0061t'", "SELECT ?, ?"),
    ("SELECT $$a 'b' 1$$, $t$ $$ 2 $t$", "SELECT ?, ?"),
    ("SELECT $1, %s, %(name)s, ?, :name FROM t2", "SELECT $1, %s, %(name)s, ?, :name FROM t2"),
    ('SELECT "col1" FROM "tbl2"', 'SELECT "col1" FROM "tbl2"'),
    ("SELECT a FROM t -- 'secret' 123\nWHERE b = 1", "SELECT a FROM t \nWHERE b = ?"),
    ("SELECT/* 99 */1", "SELECT ?"),
    ("SELECT a/**/FROM t", "SELECT a FROM t"),
    ("SELECT 'unterminated, 1, 2", "SELECT ?"),
    ("SELECT $$unterminated 1", "SELECT ?"),
    ("SELECT arr[1] FROM t", "SELECT arr[?] FROM t"),
    ("SELECT -5, +3", "SELECT -?, +?"),
]


@pytest.mark.parametrize(("sql", "expected"), PARAMETERIZE_CASES)
def test_parameterize_standard(sql, expected):
    assert parameterize(sql) == expected


MYSQL_PARAMETERIZE_CASES = [
    ("SELECT 'it\\'s', \"dq \\\" 1\" FROM `t1`", "SELECT ?, ? FROM `t1`"),
    ("SELECT 1 # 'secret' 2\nFROM t", "SELECT ? \nFROM t"),
    ("SELECT _utf8mb4'x', 0xFF", "SELECT _utf8mb4?, ?"),
    ("SELECT $$ 1", "SELECT $$ ?"),  # no dollar quoting in MySQL
]


@pytest.mark.parametrize(("sql", "expected"), MYSQL_PARAMETERIZE_CASES)
def test_parameterize_mysql(sql, expected):
    assert parameterize(sql, mysql=True) == expected


def test_parameterize_non_strings_fail_closed():
    assert parameterize(None) == "?"  # type: ignore[arg-type]
    assert parameterize(b"SELECT 'x'") == "?"  # type: ignore[arg-type]


# --- properties ------------------------------------------------------------------------------------

TEMPLATES = [
    "SELECT a, {} FROM {t} WHERE b = {} AND c IN ({}, {})",
    "INSERT INTO {t} (a, b) VALUES ({}, {})",
    "UPDATE {t} SET a = {} WHERE b = {}",
    "DELETE FROM {t} WHERE a = {} OR a > {}",
    "SELECT * FROM {t} WHERE a LIKE {} ORDER BY b LIMIT {}",
    "WITH x AS (SELECT {} AS v) SELECT v FROM {t} WHERE v <> {}",
    "SELECT {} FROM {t}",
    "SELECT {}",
    "{}",
    "CALL proc({}, {})",
]
SLOTS = 5
_KEYWORDS = {w.lower() for w in OPERATIONS} | {"from", "where", "into", "values", "set", "as", "or", "and", "in"}
#: Table names without digits, so a digit in the output can only come from a literal.
identifiers = (
    st.text(string.ascii_letters + "_", min_size=1, max_size=12)
    .filter(lambda s: s.lower() not in _KEYWORDS)
    .map(lambda s: "tbl_" + s)
)
texts = st.text(max_size=40)
numbers = st.one_of(
    st.integers(min_value=0).map(str),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
    st.integers(min_value=0, max_value=2**64).map(hex),
)


def _single(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _backslashed(quote: str, s: str) -> str:
    return quote + s.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


def _dollar(tag: str, s: str) -> str:
    return f"${tag}${s}${tag}$"


standard_literals = st.one_of(
    numbers,
    texts.map(_single),
    texts.map(lambda s: "E" + _backslashed("'", s)),
    st.tuples(st.sampled_from(["", "q", "tag_"]), texts)
    .filter(lambda ts: f"${ts[0]}$" not in ts[1] and not ts[1].endswith("$"))
    .map(lambda ts: _dollar(*ts)),
    st.binary(max_size=8).map(lambda b: f"X'{b.hex()}'"),
    st.text("01", max_size=8).map(lambda b: f"B'{b}'"),
)
mysql_literals = st.one_of(
    numbers,
    texts.map(lambda s: _backslashed("'", s)),
    texts.map(lambda s: _backslashed('"', s)),
    st.binary(max_size=8).map(lambda b: f"X'{b.hex()}'"),
)


def _fill(template: str, table: str, values: list[str]) -> str:
    return template.replace("{t}", table).format(*values)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TEMPLATES), identifiers, st.lists(standard_literals, min_size=SLOTS, max_size=SLOTS))
def test_literals_never_survive_standard(template, table, literals):
    sql = _fill(template, table, literals)
    blank = _fill(template, table, ["?"] * SLOTS)
    out = parameterize(sql)
    assert out == blank
    assert not re.search(r"\d", out)
    assert summarize(sql) == summarize(blank)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TEMPLATES), identifiers, st.lists(mysql_literals, min_size=SLOTS, max_size=SLOTS))
def test_literals_never_survive_mysql(template, table, literals):
    sql = _fill(template, table, literals)
    blank = _fill(template, table, ["?"] * SLOTS)
    out = parameterize(sql, mysql=True)
    assert out == blank
    assert not re.search(r"\d", out)
    assert summarize(sql, mysql=True) == summarize(blank, mysql=True)


@given(st.sampled_from(TEMPLATES), identifiers, st.lists(texts, min_size=SLOTS, max_size=SLOTS))
def test_summary_never_contains_string_content(template, table, contents):
    """Whatever a string literal holds (keywords, quotes, comment markers), the summary is the same."""
    for mysql, quote in ((False, _single), (True, lambda s: _backslashed("'", s))):
        sql = _fill(template, table, [quote(s) for s in contents])
        op, collection = summarize(sql, mysql=mysql)
        assert (op, collection) == summarize(_fill(template, table, ["?"] * SLOTS), mysql=mysql)
        assert collection in ("", table)


NAME = re.compile(r"[^\x00-\x1f\"'`\[\]]{1,64}(\.[^\x00-\x1f\"'`\[\]]{1,64}){0,2}\Z")


@settings(max_examples=500)
@given(st.one_of(st.text(), st.text(alphabet="SELECTFROMINSERTINTOWITH ()'\"`[]$-/*#\\.;,\n0123456789abc")))
@pytest.mark.parametrize("mysql", [False, True])
def test_never_raises_and_stays_bounded(mysql, sql):
    op, collection = summarize(sql, mysql=mysql)
    assert op in OPERATIONS or op in ("", OPERATION_OTHER)
    assert collection == "" or NAME.match(collection)
    out = parameterize(sql, mysql=mysql)
    assert isinstance(out, str)
    if not set(sql) & set('"`['):  # no quoted identifier that may hold a quote
        assert "'" not in out  # every single-quoted string was replaced (an open one swallows the rest)


@pytest.mark.parametrize("mysql", [False, True])
@pytest.mark.parametrize("sql", ["'\\", "E'\\", "x = 'abc\\", '"\\'])
def test_unterminated_string_ending_in_a_backslash_leaks_nothing(sql, mysql):
    """Found by Hypothesis: a lone trailing backslash used to end the string token early."""
    out = parameterize(sql, mysql=mysql)
    assert "'" not in out and "abc" not in out
