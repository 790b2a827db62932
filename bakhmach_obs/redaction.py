"""One redaction policy for every signal: log records, span attributes, HTTP headers and URLs.

A :class:`RedactionPolicy` combines three rules:

* **Denied keys.** A mapping key or header name that is denied has its whole value (a string, a
  number, even a nested dict or list) replaced by ``[REDACTED]``, at any depth.
* **Value patterns.** Free text is scanned for ``Bearer <token>``, ``Basic <base64 user:pass>``,
  JWTs (``eyJ...``, three to five base64url segments), payment card numbers (13-19 digits, single
  spaces or dashes between groups, passing the Luhn check) and URLs. Only the secret part is
  replaced: ``Bearer [REDACTED]``.
* **URLs**, as the OpenTelemetry semantic conventions require for ``url.full``: userinfo becomes
  ``REDACTED:REDACTED@`` and the values of the seven signed-URL query keys (:data:`URL_QUERY_KEYS`,
  matched case-sensitively) become ``REDACTED``. The key and the rest of the URL are kept.

How keys match
--------------
A key is *normalised*: lowercased, and every run of characters other than letters and digits
(``-``, ``.``, space...) becomes ``_``. It is checked in two forms: as is, and with camelCase split
into words first (``accessToken`` becomes ``access_token``). In either form the key is denied when

1. its ``_``-separated words **end with** the words of a denied key. ``db_password``,
   ``User-Api-Key``, ``X-Auth-Token``, ``stripe_secret_key`` and
   ``http.request.header.authorization`` are denied, but ``token_count``, ``session_count`` and
   ``auth_method`` are not, because the sensitive word is not the last one. Before the comparison,
   trailing qualifier words that do not change what the value is are dropped (``password_hash``,
   ``cookie_value``, ``authorization_header``: see ``_QUALIFIERS``); or
2. its last word **ends with** one of a few unmistakable denied words glued to a prefix:
   ``dbpassword``, ``xsrftoken``, ``mysecret`` (see ``_GLUED``, only those still in the denylist).

Plurals are not folded: ``cookies``, ``secrets`` and ``passwords`` are listed explicitly, while
``max_tokens`` and ``input_tokens`` (counts, not credentials) stay visible.

Failure behaviour
-----------------
Redaction never raises, so it can never break logging. When a value cannot be inspected (a cycle,
nesting deeper than ``max_depth``, an unexpected error) the replacement is returned instead of the
value. Objects other than strings, bytes, mappings, lists, tuples and sets are returned unchanged;
their ``__str__`` and ``__repr__`` are never called.

Example:
    >>> from bakhmach_obs.redaction import DEFAULT_POLICY as policy
    >>> policy.redact({"user_id": 42, "db_password": "hunter2", "headers": {"X-Api-Key": "k-123"}})
    {'user_id': 42, 'db_password': '[REDACTED]', 'headers': {'X-Api-Key': '[REDACTED]'}}
    >>> policy.redact_text("auth failed for Bearer abc.def-123, card 4111 1111 1111 1111, order 1234567890123")
    'auth failed for Bearer [REDACTED], card [REDACTED], order 1234567890123'
    >>> policy.redact_url("https://bob:pw@s3.example.com/b/o?X-Amz-Signature=abc&SIG=1&sig=2#top")
    'https://REDACTED:REDACTED@s3.example.com/b/o?X-Amz-Signature=REDACTED&SIG=1&sig=REDACTED#top'
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["DEFAULT_DENIED_KEYS", "DEFAULT_POLICY", "REDACTED", "URL_QUERY_KEYS", "RedactionPolicy"]

#: What a denied value, or the secret part of a text pattern, is replaced with.
REDACTED = "[REDACTED]"

#: The literal the OpenTelemetry URL conventions use for userinfo and signed query values.
_URL_REDACTED = "REDACTED"

#: Query keys whose values semconv says SHOULD be redacted in ``url.full`` (matched case-sensitively).
URL_QUERY_KEYS: tuple[str, ...] = (
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
)

_NON_WORD = re.compile(r"[\W_]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _normalize(key: str, *, camel: bool = False) -> str:
    """Lowercase ``key`` and turn runs of non-alphanumerics into single ``_`` (trimmed)."""
    if camel:
        key = _CAMEL.sub("_", key)
    return _NON_WORD.sub("_", key.lower()).strip("_")


_DEFAULT_KEYS = """
    password passwd pwd passphrase passwords
    secret secrets client_secret secret_key secret_access_key
    token access_token refresh_token id_token auth_token api_token bearer_token session_token
    access_tokens refresh_tokens auth_tokens
    api_key apikey api_keys x_api_key access_key access_key_id private_key privatekey signing_key encryption_key
    auth authorization proxy_authorization bearer credential credentials jwt signature otp
    cookie cookies set_cookie session sessionid session_id session_key jsessionid phpsessid sid
    csrf xsrf csrf_token xsrf_token csrftoken xsrftoken
    connection_string dsn
    credit_card creditcard card_number cardnumber cc_number ccnumber cvv cvv2 cvc cvc2 pin_code iban
    ssn social_security_number
"""

#: The built-in denylist, already normalised (lowercase, ``_`` between words).
DEFAULT_DENIED_KEYS: frozenset[str] = frozenset(_DEFAULT_KEYS.split())

#: Trailing words dropped before matching: ``password_hash`` is as sensitive as ``password``.
_QUALIFIER_WORDS = """
    hash hashed digest header headers value values raw plain plaintext encrypted enc b64 base64 hex bytes
    str string text data pem
"""
_QUALIFIERS = frozenset(_QUALIFIER_WORDS.split())

#: Denied words that are still recognised when glued to a prefix (``dbpassword``, ``csrftoken``).
_GLUED = ("password", "passwd", "passphrase", "secret", "token", "apikey", "privatekey", "credential", "cookie")

_CACHE_LIMIT = 4096
#: Strings up to this length that passed every pre-check are remembered (enum-like field values:
#: actions, methods, routes, regions), up to ``_CACHE_LIMIT`` of them; longer ones (UUIDs, messages) never are.
_CLEAN_MAX_LEN = 32
#: Values the fast path of :meth:`RedactionPolicy.redact_mapping` passes through without a look.
_SCALARS = frozenset((int, float, bool, type(None)))

# --- value patterns (ASCII classes on purpose: they describe wire formats) ----------------------

_B64TOKEN = r"[A-Za-z0-9\-._~+/]+=*"  # RFC 6750 b64token
_BEARER = re.compile(r"(bearer\s+)" + _B64TOKEN, re.ASCII | re.IGNORECASE)
_BASIC = re.compile(r"(basic[ \t]+)([A-Za-z0-9+/]+={0,2})(?![A-Za-z0-9+/=])", re.ASCII | re.IGNORECASE)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){2,4}")
# Starts with the digit class (not the lookbehind) so that the regex engine can skip to digits.
_CARD = re.compile(r"[0-9](?<![0-9][0-9])(?:[ -]?[0-9]){12,}")
_DIGIT_GROUP = re.compile(r"[0-9]+")
_USERINFO = re.compile(r"(://)[^/?#\s\"'<>]*@")

# Pre-checks: every pass of RedactionPolicy._scan runs only when a cheap substring test says its
# pattern could match. The patterns are ASCII and case-insensitive only in ASCII, so "bearer" in
# text.lower() is a superset test. Cards are tested on the UTF-8 bytes (multi-byte sequences never
# contain ASCII bytes): a candidate is 13+ digits with single spaces or dashes between them, so it
# leaves a run of 13+ "1" when digits, spaces and dashes become "1" and everything else NUL
# (``_RUNS``), and still when only digits become "1" and spaces and dashes are deleted
# (``_DIGITS_FOLD``: sharper, "2024-05-01 12:00" passes it, but slower).
_RUNS = bytes(ord("1") if 48 <= c <= 57 or c in (32, 45) else 0 for c in range(256))
_DIGITS_FOLD = bytes(ord("1") if 48 <= c <= 57 else c for c in range(256))
_CARD_TRIGGER = b"1" * 13


def _card_candidate(text: str) -> bool:
    """``False`` only if :data:`_CARD` cannot match ``text``."""
    try:
        data = text.encode()
    except UnicodeEncodeError:  # lone surrogates: let the regex decide
        return True
    if _CARD_TRIGGER not in data.translate(_RUNS):
        return False
    return data.translate(_DIGITS_FOLD, b" -").find(_CARD_TRIGGER) >= 0


def _luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check on a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _safe_iter(value: Iterable[Any]) -> list[Any]:
    return list(value)


def _keys(keys: Iterable[str]) -> tuple[str, ...]:
    """``keys`` as a tuple; a single string is one key, not a sequence of characters."""
    return (keys,) if isinstance(keys, str) else tuple(keys)


class RedactionPolicy:
    """Denied keys, value patterns and URL rules, decided at construction and applied anywhere.

    Args:
        denied_keys: keys whose values are always replaced (normalised here; the default is
            :data:`DEFAULT_DENIED_KEYS`). Passing a set replaces the built-in list.
        extra_keys: more denied keys on top of ``denied_keys`` (the ``redact_keys`` setting).
        patterns: scan free text for bearer/basic credentials, JWTs, card numbers and URLs.
            ``False`` leaves text alone; keys, :meth:`redact_url` and header names still apply.
        url_query_keys: query keys whose values :meth:`redact_url` replaces (case-sensitive).
        replacement: what replaces a denied value or a secret in text.
        max_depth: nesting below this depth is replaced rather than walked.

    Raises:
        ValueError: ``max_depth`` is negative or not an integer, or ``replacement`` is not a string.

    Example:
        >>> from bakhmach_obs.redaction import RedactionPolicy
        >>> policy = RedactionPolicy(extra_keys=["customer.email"])
        >>> policy.redact_mapping({"action": "login", "customerEmail": "a@b.c", "token_count": 3})
        {'action': 'login', 'customerEmail': '[REDACTED]', 'token_count': 3}
        >>> policy.redact_headers([("Authorization", "Basic dXNlcjpwYXNz"), ("Accept", "text/html")])
        [('Authorization', '[REDACTED]'), ('Accept', 'text/html')]
        >>> policy.is_denied("X-Auth-Token"), policy.is_denied("session_count")
        (True, False)
    """

    __slots__ = (
        "_clean",
        "_denied",
        "_flat_ok",
        "_glued",
        "_max_depth",
        "_patterns",
        "_query_keys",
        "_query_text",
        "_query_url",
        "_replacement",
        "_safe_keys",
        "_verdicts",
        "_walkers",
    )

    def __init__(
        self,
        *,
        denied_keys: Iterable[str] = DEFAULT_DENIED_KEYS,
        extra_keys: Iterable[str] = (),
        patterns: bool = True,
        url_query_keys: Iterable[str] = URL_QUERY_KEYS,
        replacement: str = REDACTED,
        max_depth: int = 32,
    ) -> None:
        if not isinstance(replacement, str):
            raise ValueError(f"replacement must be a string, not {type(replacement).__name__}")
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
            raise ValueError(f"max_depth must be a non-negative integer, not {max_depth!r}")
        given = [str(k) for k in (*_keys(denied_keys), *_keys(extra_keys))]
        names = {_normalize(k) for k in given} | {_normalize(k, camel=True) for k in given}
        self._denied: frozenset[str] = frozenset(n for n in names if n)
        self._glued = tuple(g for g in _GLUED if g in self._denied)
        self._patterns = bool(patterns)
        self._query_keys: tuple[str, ...] = tuple(dict.fromkeys(str(k) for k in _keys(url_query_keys) if str(k)))
        self._replacement = replacement
        self._max_depth = max_depth
        self._flat_ok = max_depth > 0  # a flat mapping is within reach of the fast path
        alternation = "|".join(re.escape(k) for k in sorted(self._query_keys, key=len, reverse=True))
        self._query_url: re.Pattern[str] | None = None
        self._query_text: re.Pattern[str] | None = None
        if alternation:
            self._query_url = re.compile(rf"(?<=[?&;])({alternation})=[^&#;]+")
            self._query_text = re.compile(rf"(?<=[?&;])({alternation})=[^&#;\s\"'<>]+")
        #: key -> denied? (bounded; cleared when full)
        self._verdicts: dict[str, bool] = {}
        #: keys known not to be denied, for the set-inclusion test of the fast path
        self._safe_keys: set[str] = set()
        #: short strings known to contain no pattern, for the fast path (bounded; cleared when full)
        self._clean: set[str] = set()
        self._walkers: dict[type, Callable[[Any, int, set[int] | None], Any]] = {
            str: self._walk_str,
            dict: self._walk_mapping,
            list: self._walk_list,
            tuple: self._walk_tuple,
            set: self._walk_set,
            frozenset: self._walk_set,
            bytes: self._walk_bytes,
            bytearray: self._walk_bytes,
        }

    # --- construction helpers ---------------------------------------------------------------

    @property
    def denied_keys(self) -> frozenset[str]:
        """The normalised denylist in force."""
        return self._denied

    @property
    def replacement(self) -> str:
        """What denied values and secrets in text are replaced with."""
        return self._replacement

    def extend(self, keys: Iterable[str] = ()) -> RedactionPolicy:
        """A new policy with the same settings and ``keys`` added to the denylist.

        Example:
            >>> from bakhmach_obs.redaction import DEFAULT_POLICY
            >>> DEFAULT_POLICY.extend(["tenant-email"]).is_denied("TENANT_EMAIL")
            True
        """
        return RedactionPolicy(
            denied_keys=self._denied,
            extra_keys=keys,
            patterns=self._patterns,
            url_query_keys=self._query_keys,
            replacement=self._replacement,
            max_depth=self._max_depth,
        )

    def __repr__(self) -> str:
        return (
            f"RedactionPolicy(denied_keys=<{len(self._denied)} keys>, patterns={self._patterns}, "
            f"url_query_keys={self._query_keys!r}, replacement={self._replacement!r}, max_depth={self._max_depth})"
        )

    # --- keys ---------------------------------------------------------------------------------

    def is_denied(self, key: str) -> bool:
        """Whether values under ``key`` are replaced (see "How keys match" in the module docs).

        An Enum key is judged by its value (what JSON writes); other keys that are neither ``str`` nor
        ``bytes`` are never denied.
        """
        try:
            verdict = self._verdicts.get(key)
            if verdict is None:
                verdict = self._decide(key)
                if len(self._verdicts) >= _CACHE_LIMIT:
                    self._verdicts.clear()
                    self._safe_keys.clear()
                self._verdicts[key] = verdict
                if not verdict and type(key) is str:
                    self._safe_keys.add(key)
            return verdict
        except Exception:  # noqa: BLE001 - an unhashable or hostile key: decide without the cache
            try:
                return self._decide(key)
            except Exception:  # noqa: BLE001
                return isinstance(key, (str, bytes))  # fail closed for text keys we cannot read

    def _decide(self, key: Any) -> bool:
        if isinstance(key, enum.Enum) and not isinstance(key, str):
            key = key.value  # JSON writes an Enum key as its value
        if isinstance(key, (bytes, bytearray)):
            key = bytes(key).decode("latin-1")
        elif not isinstance(key, str):
            return False
        key = str.__str__(key)  # a plain str, whatever the subclass does
        forms = {_normalize(key), _normalize(key, camel=True)}
        return any(self._denied_form(form) for form in forms if form)

    def _denied_form(self, form: str) -> bool:
        words = form.split("_")
        denied = self._denied
        while True:  # the words as they are, then without each trailing qualifier in turn
            for start in range(len(words)):
                if "_".join(words[start:]) in denied:
                    return True
            last = words[-1]
            if any(last.endswith(g) for g in self._glued):
                return True
            if len(words) == 1 or last not in _QUALIFIERS:
                return False
            words.pop()

    # --- text ---------------------------------------------------------------------------------

    def redact_text(self, text: str) -> str:
        """Cut bearer/basic credentials, JWTs, Luhn-valid card numbers and URL secrets out of ``text``.

        Non-string input is returned unchanged. Card numbers are recognised as a run of 13-19
        digits, with at most one space or dash between digits, not glued to further digits.

        Example:
            >>> from bakhmach_obs.redaction import DEFAULT_POLICY
            >>> DEFAULT_POLICY.redact_text("GET /f?sig=abc&v=1 token eyJhbGciOiJI.eyJzdWIiOjF9.sgn")
            'GET /f?sig=REDACTED&v=1 token [REDACTED]'
        """
        if not isinstance(text, str):
            return text
        if not self._patterns:
            return text
        try:
            if type(text) is str:
                return self._scan(text)
            plain = str.__str__(text)  # a str subclass: scan its characters, not its overrides
            out = self._scan(plain)
            return text if out == plain else out
        except Exception:  # noqa: BLE001 - never break the caller; fail closed
            return self._replacement

    def _scan(self, text: str) -> str:
        out = text
        if "://" in text and "@" in text:
            out = _USERINFO.sub(r"\1REDACTED:REDACTED@", out)
        if "=" in text and self._query_text is not None:
            out = self._query_text.sub(r"\1=REDACTED", out)
        low = text.lower()
        if "bearer" in low:
            out = _BEARER.sub(self._sub_bearer, out)
        if "basic" in low:
            out = _BASIC.sub(self._sub_basic, out)
        if "eyJ" in text:
            out = _JWT.sub(self._sub_all, out)
        if len(text) >= 13 and _card_candidate(text):
            out = _CARD.sub(self._sub_card, out)
        return out

    def _may_match(self, joined: str) -> bool:
        """``False`` only if :meth:`_scan` would change none of the strings joined by NUL in ``joined``.

        The same tests as :meth:`_scan`, on all strings at once: NUL is in no pattern, so nothing
        matches across two strings.
        """
        if ("@" in joined and "://" in joined) or "eyJ" in joined:  # "@" first: one memchr
            return True
        if "=" in joined and self._query_text is not None and self._query_text.search(joined) is not None:
            return True
        low = joined.lower()
        return "bearer" in low or "basic" in low or (len(joined) >= 13 and _card_candidate(joined))

    def _sub_all(self, match: re.Match[str]) -> str:
        return self._replacement

    def _sub_bearer(self, match: re.Match[str]) -> str:
        return match.group(1) + self._replacement

    def _sub_basic(self, match: re.Match[str]) -> str:
        token = match.group(2)
        try:
            decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
        except (binascii.Error, ValueError):
            return match.group(0)
        if b":" not in decoded:
            return match.group(0)  # not user:password, e.g. "basic information"
        return match.group(1) + self._replacement

    def _sub_card(self, match: re.Match[str]) -> str:
        run = match.group(0)
        digits = run.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            return self._replacement
        return self._cards_within(run)

    def _cards_within(self, run: str) -> str:
        """Cards among a run's digit groups: ``4111 1111 1111 1111 12`` is a card and a ``12``.

        The run failed as a whole. Stretches of whole groups laid out as cards are (a first group
        of 4 or more digits, then groups of 3 or more, the last of any length, 13-19 digits in all)
        are tried left to right, longest first; a few groups from each start at most, so the work
        is linear in the run.
        """
        groups = [(m.start(), m.end()) for m in _DIGIT_GROUP.finditer(run)]
        if len(groups) < 2:
            return run
        out: list[str] = []
        kept = 0
        i = 0
        while i < len(groups):
            if groups[i][1] - groups[i][0] < 4:
                i += 1
                continue
            ends: list[int] = []
            count = 0
            for j in range(i, len(groups)):
                size = groups[j][1] - groups[j][0]
                count += size
                if count > 19:
                    break
                ends.append(j)  # the last group of a stretch may be short: 4111 1111 1111 1
                if j > i and size < 3:
                    break
            for j in reversed(ends):
                start, end = groups[i][0], groups[j][1]
                digits = run[start:end].replace(" ", "").replace("-", "")
                if len(digits) >= 13 and _luhn_ok(digits):
                    out.append(run[kept:start] + self._replacement)
                    kept = end
                    i = j
                    break
            i += 1
        return "".join(out) + run[kept:] if out else run

    # --- URLs and headers -------------------------------------------------------------------

    def redact_url(self, url: str) -> str:
        """``url`` with userinfo as ``REDACTED:REDACTED@`` and signed query values as ``REDACTED``.

        Follows the semconv rules for ``url.full``; everything else is kept byte for byte. Query
        keys match case-sensitively (``sig`` is redacted, ``SIG`` is not). Never raises: input
        that is not a string is returned unchanged.

        Example:
            >>> from bakhmach_obs.redaction import DEFAULT_POLICY
            >>> DEFAULT_POLICY.redact_url("https://user:pass@example.com/p?color=blue&sig=x")
            'https://REDACTED:REDACTED@example.com/p?color=blue&sig=REDACTED'
        """
        if not isinstance(url, str):
            return url
        try:
            out = url
            if "@" in out and "://" in out:
                out = _USERINFO.sub(r"\1REDACTED:REDACTED@", out)
            if "=" in out and self._query_url is not None:
                out = self._query_url.sub(r"\1=REDACTED", out)
            return out
        except Exception:  # noqa: BLE001
            return self._replacement

    def redact_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Header pairs with denied names' values replaced and other values through :meth:`redact_text`.

        Names and values given as ``bytes`` (ASGI) are decoded as latin-1. Pairs that cannot be
        read are dropped; an unreadable ``headers`` gives ``[]``.
        """
        result: list[tuple[str, str]] = []
        try:
            items = _safe_iter(headers)
        except Exception:  # noqa: BLE001
            return result
        for item in items:
            try:
                name, value = item
                if isinstance(name, (bytes, bytearray)):
                    name = bytes(name).decode("latin-1")
                if isinstance(value, (bytes, bytearray)):
                    value = bytes(value).decode("latin-1")
                if not isinstance(name, str):
                    continue
                if self.is_denied(name):
                    result.append((name, self._replacement))
                elif isinstance(value, str):
                    result.append((name, self.redact_text(value)))
                else:
                    result.append((name, self._replacement))
            except Exception:  # noqa: BLE001 - a malformed pair is dropped, never raised
                continue
        return result

    # --- structures ---------------------------------------------------------------------------

    def redact(self, value: Any, key: str | None = None) -> Any:
        """``value`` with denied keys' values replaced and text patterns redacted, at any depth.

        Dicts (and other mappings) come back as new dicts; lists, tuples, sets and frozensets keep
        their type; bytes are scanned when they decode as UTF-8; other objects are returned as is.
        When ``key`` is given and denied, the whole value is replaced.

        Example:
            >>> from bakhmach_obs.redaction import DEFAULT_POLICY
            >>> DEFAULT_POLICY.redact([{"Cookie": "a=b"}, ("ok", "Bearer t0k")])
            [{'Cookie': '[REDACTED]'}, ('ok', 'Bearer [REDACTED]')]
            >>> DEFAULT_POLICY.redact({"id": 1}, key="refresh_token")
            '[REDACTED]'
        """
        try:
            if key is not None and self.is_denied(key):
                return self._replacement
            return self._walk(value, 0, None)
        except Exception:  # noqa: BLE001 - includes RecursionError with a huge max_depth
            return self._replacement

    def redact_mapping(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        """A new dict: :meth:`redact` applied to every value, denied keys' values replaced.

        The hot path of the log formatter, with a fast path for a flat dict (every value a string,
        number, bool or ``None``). Its strings are joined and given the pre-checks of
        :meth:`redact_text` at once (substring tests, no regex unless one fires); strings of up to
        32 characters that passed are remembered in a bounded set (cleared at 4096), so repeated
        field values (actions, methods, routes) skip even that. If nothing can match, only the keys
        are looked at, and when all of them are known to be allowed (a set-inclusion test against
        the key cache) the result is a plain copy.

        Example:
            >>> from bakhmach_obs.redaction import DEFAULT_POLICY
            >>> DEFAULT_POLICY.redact_mapping({"action": "pay", "apiKey": "k", "note": "Bearer t0k3n"})
            {'action': 'pay', 'apiKey': '[REDACTED]', 'note': 'Bearer [REDACTED]'}
        """
        try:
            if type(mapping) is dict and self._flat_ok:
                result = self._flat(mapping, [])
                if result is not None:
                    return result
            return self._walk_dict(mapping)
        except Exception:  # noqa: BLE001 - an unreadable mapping: nothing of it is shown
            return {}

    def redact_message_and_fields(self, message: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """:meth:`redact_text` of ``message`` and :meth:`redact_mapping` of ``fields`` in one pass.

        The log formatter's hot path: the message joins the fields' strings in the one pre-check,
        so a clean record costs one substring scan instead of two.

        Example:
            >>> from bakhmach_obs.redaction import DEFAULT_POLICY
            >>> DEFAULT_POLICY.redact_message_and_fields("paid with Bearer t0k", {"password": "x", "n": 1})
            ('paid with Bearer [REDACTED]', {'password': '[REDACTED]', 'n': 1})
        """
        try:
            if type(message) is str and type(fields) is dict and self._flat_ok and self._patterns:
                result = self._flat(fields, [] if message in self._clean else [message])
                if result is not None:
                    return message, result
        except Exception:  # noqa: BLE001 - fall back to the two separate, individually safe calls
            pass
        return self.redact_text(message), self.redact_mapping(fields)

    def _flat(self, mapping: dict[str, Any], pending: list[str]) -> dict[str, Any] | None:
        """The fast path of a flat dict whose strings (and ``pending``) need no pattern redaction.

        ``None`` when it does not apply: a value is not a scalar, or a pattern may match.
        """
        add = pending.append
        clean = self._clean
        for value in mapping.values():
            cls = type(value)
            if cls is str:
                if value not in clean:
                    add(value)
            elif cls not in _SCALARS:
                return None
        if pending and self._patterns:
            if self._may_match("\x00".join(pending)):
                return None
            self._remember(pending)
        safe = self._safe_keys
        if mapping.keys() <= safe:
            return mapping.copy()
        result = mapping.copy()
        denied, replacement = self.is_denied, self._replacement
        for key in mapping.keys() - safe:  # new or denied keys only
            if denied(key):
                result[key] = replacement
        return result

    def _walk_dict(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        result = self._walk_mapping(mapping, 0, None)
        return result if isinstance(result, dict) else {}  # max_depth=0: nothing is walked

    def _remember(self, strs: list[str]) -> None:
        """Add the short ones of ``strs`` (all clean) to the fast path's cache."""
        clean = self._clean
        if len(clean) >= _CACHE_LIMIT:
            clean.clear()
        for text in strs:
            if len(text) <= _CLEAN_MAX_LEN:
                clean.add(text)

    def _walk(self, value: Any, depth: int, seen: set[int] | None) -> Any:
        cls = type(value)
        if cls in _SCALARS:
            return value
        walker = self._walkers.get(cls)
        if walker is not None:
            return walker(value, depth, seen)
        if value is None or isinstance(value, (int, float)):
            return value
        if isinstance(value, str):
            return self._walk_str(value, depth, seen)
        if isinstance(value, Mapping):
            return self._walk_mapping(value, depth, seen)
        if isinstance(value, list):
            return self._walk_list(value, depth, seen)
        if isinstance(value, tuple):
            return self._walk_tuple(value, depth, seen)
        if isinstance(value, (set, frozenset)):
            return self._walk_set(value, depth, seen)
        if isinstance(value, (bytes, bytearray)):
            return self._walk_bytes(value, depth, seen)
        return value

    def _walk_str(self, value: str, depth: int, seen: set[int] | None) -> str:
        if type(value) is str and value in self._clean:
            return value
        return self.redact_text(value)

    def _walk_bytes(self, value: bytes | bytearray, depth: int, seen: set[int] | None) -> Any:
        if not self._patterns:
            return value
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value  # binary data: nothing textual to scan
        redacted = self.redact_text(text)
        if redacted == text:
            return value
        return bytearray(redacted.encode()) if isinstance(value, bytearray) else redacted.encode()

    def _enter(self, value: Any, depth: int, seen: set[int] | None) -> set[int] | None:
        """The ``seen`` set for walking into ``value``, or ``None`` if it must not be walked."""
        if depth >= self._max_depth:
            return None
        if seen is None:
            seen = set()
        elif id(value) in seen:
            return None
        seen.add(id(value))
        return seen

    def _walk_mapping(self, value: Mapping[Any, Any], depth: int, seen: set[int] | None) -> Any:
        inner = self._enter(value, depth, seen)
        if inner is None:
            return self._replacement
        try:
            result: dict[Any, Any] = {}
            replacement = self._replacement
            for key, item in _safe_iter(value.items()):
                if (type(key) is str and key in self._safe_keys) or not self.is_denied(key):
                    try:
                        result[key] = self._walk(item, depth + 1, inner)
                    except Exception:  # noqa: BLE001
                        result[key] = replacement
                else:
                    result[key] = replacement
            return result
        finally:
            inner.discard(id(value))

    def _walk_items(self, value: Iterable[Any], depth: int, seen: set[int]) -> list[Any]:
        out: list[Any] = []
        for item in value:
            try:
                out.append(self._walk(item, depth + 1, seen))
            except Exception:  # noqa: BLE001
                out.append(self._replacement)
        return out

    def _walk_list(self, value: list[Any], depth: int, seen: set[int] | None) -> Any:
        inner = self._enter(value, depth, seen)
        if inner is None:
            return self._replacement
        try:
            items = self._walk_items(_safe_iter(value), depth, inner)
        finally:
            inner.discard(id(value))
        if type(value) is list:
            return items
        try:
            return type(value)(items)
        except Exception:  # noqa: BLE001 - a subclass with another constructor
            return items

    def _walk_tuple(self, value: tuple[Any, ...], depth: int, seen: set[int] | None) -> Any:
        inner = self._enter(value, depth, seen)
        if inner is None:
            return self._replacement
        try:
            items = self._walk_items(_safe_iter(value), depth, inner)
        finally:
            inner.discard(id(value))
        cls = type(value)
        if cls is tuple:
            return tuple(items)
        try:
            make = getattr(cls, "_make", None)  # namedtuple
            return make(items) if callable(make) else cls(items)
        except Exception:  # noqa: BLE001
            return tuple(items)

    def _walk_set(self, value: set[Any] | frozenset[Any], depth: int, seen: set[int] | None) -> Any:
        inner = self._enter(value, depth, seen)
        if inner is None:
            return self._replacement
        try:
            items = self._walk_items(_safe_iter(value), depth, inner)
        finally:
            inner.discard(id(value))
        try:
            return type(value)(items)
        except Exception:  # noqa: BLE001 - unhashable results or an odd subclass
            return frozenset(items) if isinstance(value, frozenset) else set(items)


#: The policy with the built-in denylist, every pattern and the semconv URL keys.
DEFAULT_POLICY = RedactionPolicy()
