"""A small SQL statement scanner: the operation and table of a statement, and its literals blanked.

:func:`summarize` gives the bounded ``db.operation.name`` and the ``db.collection.name`` of a
statement; :func:`parameterize` replaces every literal with ``?`` for the opt-in
``db.query.text``. Both work on tokens (comments, strings, quoted identifiers, numbers), never on
raw text, so nothing inside a literal or a comment is ever taken for a keyword or a table name.

Rules of :func:`summarize`:

* the operation is the first keyword, upper-cased, when it is in :data:`OPERATIONS`; any other
  first word gives ``"_OTHER"``; an empty statement (or only comments) gives ``""``. ``WITH``
  gives the operation of the main statement after the common table expressions. Leading
  parentheses are skipped (``(SELECT 1) UNION (SELECT 2)`` is a ``SELECT``);
* the collection is the first table after the first top-level ``FROM`` (``SELECT``, ``DELETE``),
  after ``INTO`` (``INSERT``, ``REPLACE``, ``MERGE``), right after ``UPDATE`` (and ``TABLE``,
  ``COPY``), or after ``TABLE`` in ``CREATE``/``ALTER``/``DROP``/``TRUNCATE`` (``IF [NOT] EXISTS``,
  ``ONLY``, ``TEMPORARY``... skipped). It is ``""`` otherwise, for a sub-query or a table function
  (``FROM generate_series(1, 3)``) and for anything that does not look like a name;
* quotes are removed (``"t"``, ```t```, ``[t]``); schema-qualified names are kept as written
  (``public.users``, at most three parts); each part is at most 64 characters of letters, digits,
  ``_``, ``$``, ``-`` and inner spaces, or the collection is ``""``.

Results are cached per statement string (statements repeat); long statements are scanned only up
to :data:`SCAN_LIMIT` characters and are not cached.

``mysql=True`` reads the MySQL/MariaDB dialect: ``#`` comments, backslash escapes in strings and
``"..."`` as a string literal (still accepted as a name where only a name can stand). Otherwise the
standard dialect (PostgreSQL, SQLite...): ``''`` escapes, ``E'...'`` with backslashes, ``$$...$$``
and ``$tag$...$tag$`` strings, ``$1`` placeholders.

Example:
    >>> from bakhmach_obs._sql import parameterize, summarize
    >>> summarize("SELECT name FROM public.users WHERE id = %s")
    ('SELECT', 'public.users')
    >>> summarize('/* ORM */ INSERT INTO "order_items" (id) VALUES (1)')
    ('INSERT', 'order_items')
    >>> summarize("WITH recent AS (SELECT * FROM events) DELETE FROM archive WHERE id IN (SELECT id FROM recent)")
    ('DELETE', 'archive')
    >>> summarize("VACUUM"), summarize("frobnicate everything"), summarize("-- nothing")
    (('VACUUM', ''), ('_OTHER', ''), ('', ''))
    >>> parameterize("SELECT * FROM t WHERE name = 'O''Brien' AND age > 42 -- note")
    'SELECT * FROM t WHERE name = ? AND age > ? '
    >>> parameterize('SELECT * FROM t WHERE a = "x\\\\"y" AND b = 0x1F', mysql=True)
    'SELECT * FROM t WHERE a = ? AND b = ?'
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

__all__ = ["OPERATION_OTHER", "OPERATIONS", "SCAN_LIMIT", "parameterize", "summarize"]

#: Operation of a statement whose first word is not in :data:`OPERATIONS`.
OPERATION_OTHER = "_OTHER"

#: The operations :func:`summarize` reports (anything else is :data:`OPERATION_OTHER`).
OPERATIONS: frozenset[str] = frozenset(
    {
        "ALTER", "ANALYZE", "ATTACH", "BEGIN", "CALL", "CHECKPOINT", "CLOSE", "CLUSTER", "COMMENT", "COMMIT",
        "COPY", "CREATE", "DEALLOCATE", "DECLARE", "DELETE", "DESC", "DESCRIBE", "DETACH", "DISCARD", "DO",
        "DROP", "END", "EXEC", "EXECUTE", "EXPLAIN", "FETCH", "FLUSH", "GRANT", "HANDLER", "INSERT", "KILL",
        "LISTEN", "LOAD", "LOCK", "MERGE", "MOVE", "NOTIFY", "OPTIMIZE", "PRAGMA", "PREPARE", "REINDEX",
        "RELEASE", "RENAME", "REPLACE", "RESET", "REVOKE", "ROLLBACK", "SAVEPOINT", "SELECT", "SET", "SHOW",
        "START", "TABLE", "TRUNCATE", "UNLISTEN", "UNLOCK", "UPDATE", "USE", "VACUUM", "VALUES", "WITH",
    }
)  # fmt: skip
_OPS: dict[str, str] = {op: op for op in OPERATIONS}  # upper-cased word -> the interned constant

#: Characters of a statement that :func:`summarize` looks at; statements this long are not cached.
SCAN_LIMIT = 8192
_CACHE_SIZE = 1024
_MAX_PART = 64

# The common tokens come first (whitespace, names, punctuation) so that most positions match early.
_HEAD = r"""
 (?P<ws>\s+)
|(?P<id>(?![EeBbXxNn]'|[Uu]&')[^\W\d][\w$]*)
|(?P<pu>[(),;=*<>+%?])
"""
_TAIL = r"""
|(?P<qi>"(?:[^"]|"")*(?:"|\Z)|`(?:[^`]|``)*(?:`|\Z)|\[[^\W\d][^\]\n]*\])
|(?P<nm>0[xX][0-9A-Fa-f]+|0[bB][01]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
|(?P<op>[\s\S])
"""
_STANDARD = re.compile(
    _HEAD
    + r"""
|(?P<cm>--[^\n]*|/\*[\s\S]*?(?:\*/|\Z))
|(?P<st>[Ee]'(?:[^'\\]|\\(?:[\s\S]|\Z)|'')*(?:'|\Z)
    |(?:[BbXxNn]|[Uu]&)?'(?:[^']|'')*(?:'|\Z)
    |\$(?P<tag>[^\W\d]\w*|)\$(?:[\s\S]*?\$(?P=tag)\$|[\s\S]*\Z))
|(?P<pm>\$\d+)"""
    + _TAIL,
    re.VERBOSE,
)
_MYSQL = re.compile(
    _HEAD
    + r"""
|(?P<cm>--[^\n]*|\#[^\n]*|/\*[\s\S]*?(?:\*/|\Z))
|(?P<st>[BbXxNn]?'(?:[^'\\]|\\(?:[\s\S]|\Z)|'')*(?:'|\Z))
|(?P<dq>"(?:[^"\\]|\\(?:[\s\S]|\Z)|"")*(?:"|\Z))"""
    + _TAIL,
    re.VERBOSE,
)
_SANE_QUOTED = re.compile(r"[\w$][\w$ \-]*\Z")

_CACHE: dict[str, tuple[str, str]] = {}
_CACHE_MYSQL: dict[str, tuple[str, str]] = {}
_EMPTY = ("", "")

# Words skipped before the table name, per position.
_INSERT_MODIFIERS = frozenset({"LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "OR", "REPLACE", "ROLLBACK",
                               "ABORT", "FAIL"})  # fmt: skip
_UPDATE_MODIFIERS = frozenset({"LOW_PRIORITY", "IGNORE", "ONLY", "OR", "REPLACE", "ROLLBACK", "ABORT", "FAIL"})
_DDL_MODIFIERS = frozenset({"OR", "REPLACE", "TEMP", "TEMPORARY", "UNLOGGED", "GLOBAL", "LOCAL", "VIRTUAL",
                            "EXTERNAL", "FOREIGN"})  # fmt: skip
_TABLE_MODIFIERS = frozenset({"IF", "NOT", "EXISTS", "ONLY"})
_MAIN_AFTER_WITH = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE"})
_NOT_A_TABLE = frozenset({"SELECT", "LATERAL", "VALUES", "WITH", "TABLE", "SET", "WHERE"})


class _Tokens:
    """Significant tokens (no whitespace, no comments) of a statement, with one token of look-ahead."""

    __slots__ = ("_it", "_peeked")

    def __init__(self, sql: str, rx: re.Pattern[str], end: int) -> None:
        self._it: Iterator[re.Match[str]] = rx.finditer(sql, 0, end)
        self._peeked: tuple[str, str] | None = None

    def next(self) -> tuple[str, str]:
        """The next token as ``(kind, text)``; ``("", "")`` at the end."""
        tok = self._peeked
        if tok is not None:
            self._peeked = None
            return tok
        for m in self._it:
            kind = m.lastgroup
            if kind == "ws" or kind == "cm":
                continue
            return ("op" if kind == "pu" else kind or "op"), m.group()
        return _EMPTY

    def peek(self) -> tuple[str, str]:
        if self._peeked is None:
            self._peeked = self.next()
        return self._peeked


def _part(kind: str, text: str) -> str:
    """One part of a name, unquoted; ``""`` when it is not a plausible name."""
    if kind == "id":
        return text if len(text) <= _MAX_PART else ""
    if kind in ("qi", "dq") and len(text) >= 3 and text[-1] == {"[": "]"}.get(text[0], text[0]):
        inner = text[1:-1]
        if len(inner) <= _MAX_PART and _SANE_QUOTED.match(inner):
            return inner
    return ""


def _name(toks: _Tokens, kind: str, text: str, callable_means_none: bool = False) -> str:
    """The (possibly qualified) name starting at the token ``(kind, text)``, or ``""``."""
    if kind == "id" and text.upper() in _NOT_A_TABLE:
        return ""
    parts = [_part(kind, text)]
    if not parts[0]:
        return ""
    while toks.peek() == ("op", "."):
        toks.next()
        part = _part(*toks.next())
        if not part or len(parts) == 3:
            return ""
        parts.append(part)
    if callable_means_none and toks.peek() == ("op", "("):
        return ""  # a table function: FROM generate_series(1, 3)
    return ".".join(parts)


def _skip(toks: _Tokens, words: frozenset[str]) -> tuple[str, str]:
    """The first token that is not one of ``words`` (at most 8 are skipped)."""
    tok = toks.next()
    for _ in range(8):
        if tok[0] != "id" or tok[1].upper() not in words:
            break
        tok = toks.next()
    return tok


def _after_keyword(toks: _Tokens, keyword: str, from_clause: bool) -> str:
    """The name after the first ``keyword`` outside parentheses (stops at ``;`` or an unmatched ``)``)."""
    depth = 0
    while True:
        kind, text = toks.next()
        if not kind:
            return ""
        if kind == "op":
            if text == "(":
                depth += 1
            elif text == ")":
                depth -= 1
                if depth < 0:
                    return ""
            elif text == ";" and depth == 0:
                return ""
            continue
        if depth == 0 and kind == "id" and text.upper() == keyword:
            tok = _skip(toks, _TABLE_MODIFIERS) if from_clause else toks.next()
            return _name(toks, *tok, callable_means_none=from_clause)


def _collection(op: str, toks: _Tokens) -> str:
    if op in ("SELECT", "DELETE"):
        return _after_keyword(toks, "FROM", True)
    if op in ("INSERT", "REPLACE"):
        tok = _skip(toks, _INSERT_MODIFIERS)
        if tok[0] == "id" and tok[1].upper() == "INTO":
            tok = toks.next()
        return _name(toks, *tok)
    if op == "MERGE":
        return _after_keyword(toks, "INTO", False)
    if op == "UPDATE":
        return _name(toks, *_skip(toks, _UPDATE_MODIFIERS))
    if op in ("TABLE", "COPY"):
        return _name(toks, *toks.next())
    if op in ("CREATE", "ALTER", "DROP", "TRUNCATE"):
        tok = _skip(toks, _DDL_MODIFIERS)
        if tok[0] == "id" and tok[1].upper() == "TABLE":
            tok = _skip(toks, _TABLE_MODIFIERS)
        elif op != "TRUNCATE":
            return ""
        elif tok[0] == "id" and tok[1].upper() in _TABLE_MODIFIERS:
            tok = _skip(toks, _TABLE_MODIFIERS)
        return _name(toks, *tok)
    return ""


def _summarize(sql: str, mysql: bool) -> tuple[str, str]:
    toks = _Tokens(sql, _MYSQL if mysql else _STANDARD, min(len(sql), SCAN_LIMIT))
    kind, text = toks.next()
    depth = 0
    while kind == "op" and text == "(" and depth < 16:
        depth += 1
        kind, text = toks.next()
    if not kind:
        return _EMPTY
    if kind != "id":
        return (OPERATION_OTHER, "")
    op = _OPS.get(text.upper())
    if op is None:
        return (OPERATION_OTHER, "")
    if op == "WITH":
        inner = depth
        while True:
            kind, text = toks.next()
            if not kind:
                return ("WITH", "")
            if kind == "op":
                inner += 1 if text == "(" else -1 if text == ")" else 0
            elif inner == depth and kind == "id" and text.upper() in _MAIN_AFTER_WITH:
                op = _OPS[text.upper()]
                break
    return (op, _collection(op, toks))


def summarize(sql: str, *, mysql: bool = False) -> tuple[str, str]:
    """``(operation, collection)`` of a SQL statement (see the module docstring). Never raises.

    Example:
        >>> summarize("update `shop`.`orders` set paid = 1 where id = ?", mysql=True)
        ('UPDATE', 'shop.orders')
        >>> summarize("SELECT 'FROM secrets' AS x FROM (SELECT 1) sub")
        ('SELECT', '')
    """
    cache = _CACHE_MYSQL if mysql else _CACHE
    try:
        hit = cache.get(sql)
    except TypeError:  # unhashable: not a statement
        return _EMPTY
    if hit is not None:
        return hit
    if type(sql) is not str:
        return _EMPTY
    try:
        result = _summarize(sql, mysql)
    except Exception:  # noqa: BLE001 - a statement the scanner does not expect has no summary
        return _EMPTY
    if len(sql) <= SCAN_LIMIT:
        if len(cache) >= _CACHE_SIZE:
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # another thread got there first
                del cache[next(iter(cache))]  # the oldest entry
        cache[sql] = result
    return result


def parameterize(sql: str, *, mysql: bool = False) -> str:
    """``sql`` with every literal (string, number, hex/bit/blob, dollar-quoted) replaced by ``?``.

    Comments are removed (each becomes one space: they may hold data too). Identifiers, quoted
    identifiers (``"t"`` in the standard dialect, ```t```) and placeholders (``%s``, ``?``,
    ``:name``, ``$1``) are kept. With ``mysql=True``, ``"..."`` is a string and is replaced. An
    unterminated string swallows the rest of the statement. Never raises: anything unexpected
    gives ``"?"``.

    Example:
        >>> parameterize("INSERT INTO t (a, b) VALUES (E'it\\\\'s', $$body$$), ($1, -2.5e3)")
        'INSERT INTO t (a, b) VALUES (?, ?), ($1, -?)'
    """
    if type(sql) is not str:
        return "?"
    try:
        out: list[str] = []
        append = out.append
        blank = ("st", "nm", "dq")
        glue = False  # a comment was dropped: keep the tokens around it apart
        for m in (_MYSQL if mysql else _STANDARD).finditer(sql):
            kind = m.lastgroup
            if kind == "cm":
                glue = True
                continue
            if glue:
                glue = False
                if kind != "ws" and out and not out[-1][-1:].isspace():
                    append(" ")
            append("?" if kind in blank else m.group())
        return "".join(out)
    except Exception:  # noqa: BLE001 - fail closed
        return "?"
