"""The one redaction policy: denied keys, text patterns, URLs and headers; property tests with Hypothesis."""

from __future__ import annotations

import base64
import json
import re
from collections import OrderedDict, namedtuple
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bakhmach_obs.redaction import (
    DEFAULT_DENIED_KEYS,
    DEFAULT_POLICY,
    REDACTED,
    URL_QUERY_KEYS,
    RedactionPolicy,
)

# Modest settings: the whole file runs in a few seconds. No example database.
PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

POLICY = DEFAULT_POLICY

SAFE_KEYS = [
    "user_id",
    "action",
    "duration_ms",
    "status",
    "method",
    "path",
    "region",
    "error_code",
    "token_count",
    "max_tokens",
    "session_count",
    "auth_method",
    "cache_key",
    "primary_key",
    "keyboard",
    "count",
    "items",
    "message_id",
]

# --- helpers ------------------------------------------------------------------------------------

_CARD_LIKE = re.compile(r"[0-9](?:[ -]?[0-9]){12}")
_QUERY_LIKE = re.compile(r"[?&;](?:" + "|".join(map(re.escape, URL_QUERY_KEYS)) + r")=")


def is_plain_text(text: str) -> bool:
    """Text the policy must leave alone: no trigger of any pattern (independent of the module)."""
    low = text.lower()
    return not (
        "bearer" in low
        or "basic" in low
        or "eyJ" in text
        or "://" in text
        or _CARD_LIKE.search(text)
        or _QUERY_LIKE.search(text)
    )


def luhn_check_digit(payload: str) -> int:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # these get doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def luhn_valid(number: str) -> bool:
    return luhn_check_digit(number[:-1]) == int(number[-1])


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=repr)


# --- strategies ---------------------------------------------------------------------------------

safe_keys = st.sampled_from(SAFE_KEYS)
plain_text = st.text(max_size=30).filter(is_plain_text)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), plain_text
)
clean_trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(safe_keys, children, max_size=4),
    ),
    max_leaves=25,
)


@st.composite
def denied_key_variants(draw: st.DrawFn) -> str:
    """A denied key in random case, with '-', '_', ' ' or '.' between words and maybe a prefix."""
    base = draw(st.sampled_from(sorted(DEFAULT_DENIED_KEYS)))
    sep = draw(st.sampled_from(["_", "-", " ", "."]))
    key = sep.join(base.split("_"))
    flips = draw(st.lists(st.booleans(), min_size=len(key), max_size=len(key)))
    key = "".join(c.upper() if flip else c for c, flip in zip(key, flips, strict=True))
    prefix = draw(st.sampled_from(["", "db_", "X-", "user.", "my ", "stripe-"]))
    return prefix + key


class _Slot:
    """Where the secret goes in a generated structure."""

    def __repr__(self) -> str:
        return "SLOT"


SLOT = _Slot()


def fill(obj: Any, secret: str) -> Any:
    if obj is SLOT:
        return secret
    if isinstance(obj, dict):
        return {k: fill(v, secret) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fill(v, secret) for v in obj]
    if isinstance(obj, tuple):
        return tuple(fill(v, secret) for v in obj)
    return obj


_secret_holders = st.one_of(
    st.just(SLOT),
    st.lists(scalars, max_size=3).map(lambda items: [*items, SLOT]),
    st.dictionaries(safe_keys, scalars, max_size=3).map(lambda d: {**d, "note": SLOT}),
)
_secret_base = st.builds(
    lambda key, holder, others: {**others, key: holder},
    denied_key_variants(),
    _secret_holders,
    st.dictionaries(safe_keys, scalars, max_size=3),
)
secret_trees = st.recursive(
    _secret_base,
    lambda children: st.one_of(
        st.builds(lambda child, others: [*others, child], children, st.lists(scalars, max_size=3)),
        st.builds(lambda child, others: (child, *others), children, st.lists(scalars, max_size=2)),
        st.builds(
            lambda key, child, others: {**others, key: child},
            safe_keys,
            children,
            st.dictionaries(safe_keys, scalars, max_size=3),
        ),
    ),
    max_leaves=12,
)


@st.composite
def luhn_cards(draw: st.DrawFn) -> tuple[str, str]:
    """(digits, as written): 13-19 digits with a valid Luhn check digit, maybe grouped."""
    payload = "".join(map(str, draw(st.lists(st.integers(0, 9), min_size=12, max_size=18))))
    digits = payload + str(luhn_check_digit(payload))
    style = draw(st.sampled_from(["plain", "4-space", "4-dash", "random"]))
    if style == "plain":
        return digits, digits
    if style in ("4-space", "4-dash"):
        sep = " " if style == "4-space" else "-"
        return digits, sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    seps = draw(st.lists(st.sampled_from(["", "", " ", "-"]), min_size=len(digits) - 1, max_size=len(digits) - 1))
    return digits, digits[0] + "".join(s + d for s, d in zip(seps, digits[1:], strict=True))


# Separators that cannot glue a card to digits of the surrounding text.
BEFORE = st.sampled_from([" card=", ": ", "\n#", "(", "|", "card "])
AFTER = st.sampled_from([")", ".", ";", "|", " ok", "\n", "x"])

# --- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "Password",
        "db_password",
        "dbPassword",
        "dbpassword",
        "user-api-key",
        "X-Api-Key",
        "apiKey",
        "X-Auth-Token",
        "X-CSRF-Token",
        "csrftoken",
        "stripe_secret_key",
        "AWS_SECRET_ACCESS_KEY",
        "password_hash",
        "authorization_header",
        "http.request.header.authorization",
        "Authorization",
        "Proxy-Authorization",
        "Cookie",
        "Set-Cookie",
        "sessionId",
        "session_id",
        "JSESSIONID",
        "accessToken",
        "refresh_token",
        "client_secret",
        "private_key",
        "card_number",
        "creditCard",
        "cvv",
        "iban",
        "ssn",
        "user password",
        "pAsSwOrD",
    ],
)
def test_denied_keys(key):
    assert POLICY.is_denied(key)
    assert POLICY.redact({key: "s3cr3t"}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key",
    [
        "user_id",
        "action",
        "token_count",
        "max_tokens",
        "input_tokens",
        "session_count",
        "session_duration",
        "auth_method",
        "password_reset_required",
        "cache_key",
        "primary_key",
        "keyboard",
        "monkey",
        "secretary",
        "author",
        "authority",
        "possession",
        "tokenizer",
        "duration_ms",
        "",
        "___",
    ],
)
def test_ordinary_keys_are_not_denied(key):
    assert not POLICY.is_denied(key)
    assert POLICY.redact({key: "visible"}) == {key: "visible"}


def test_default_denylist_is_normalised_and_covers_the_documented_keys():
    for key in DEFAULT_DENIED_KEYS:
        assert key == key.lower() and "-" not in key and " " not in key
    for key in ("password", "secret", "token", "api_key", "authorization", "cookie", "set_cookie", "session_id"):
        assert key in DEFAULT_DENIED_KEYS


def test_non_string_keys_are_never_denied_or_converted():
    class Loud:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        __repr__ = __str__

    loud = Loud()
    assert not POLICY.is_denied(1)  # type: ignore[arg-type]
    assert not POLICY.is_denied(("password",))  # type: ignore[arg-type]
    assert POLICY.is_denied(b"password")  # type: ignore[arg-type]
    out = POLICY.redact({1: "a", None: "b", loud: "c", ("password",): "d"})
    assert out == {1: "a", None: "b", loud: "c", ("password",): "d"}


@PROPERTY
@given(key=denied_key_variants())
def test_every_variant_of_a_denied_key_is_denied(key):
    assert POLICY.is_denied(key)


@PROPERTY
@given(tree=secret_trees, secret=st.text(min_size=6), other=st.text(min_size=6))
def test_secrets_under_denied_keys_never_reach_the_output(tree, secret, other):
    out = dumps(POLICY.redact(fill(tree, secret)))
    # The output cannot depend on the secret at all...
    assert out == dumps(POLICY.redact(fill(tree, other)))
    # ...so the secret is absent, unless it is trivially part of everything else.
    escaped = json.dumps(secret, ensure_ascii=False)[1:-1]
    baseline = dumps(POLICY.redact(fill(tree, "")))
    assume(secret not in baseline and escaped not in baseline)
    assert secret not in out
    assert escaped not in out


@PROPERTY
@given(tree=clean_trees)
def test_non_secret_values_pass_through_unchanged(tree):
    assert POLICY.redact(tree) == tree
    assert type(POLICY.redact(tree)) is type(tree)


@PROPERTY
@given(mapping=st.dictionaries(safe_keys, clean_trees, max_size=8))
def test_redact_mapping_returns_an_equal_new_dict_for_clean_input(mapping):
    first = POLICY.redact_mapping(mapping)
    second = POLICY.redact_mapping(mapping)  # keys now cached: the fast path
    assert first == second == mapping
    assert first is not mapping and second is not mapping


mixed_values = st.one_of(
    scalars,
    st.text(max_size=40),
    st.sampled_from(["Bearer abcdefgh", "eyJa.eyJb.sig", "4111 1111 1111 1111", "https://u:p@h/?sig=1", "basic"]),
    st.lists(st.text(max_size=10), max_size=3),
)
mixed_keys = st.one_of(safe_keys, denied_key_variants(), st.text(max_size=12))


@PROPERTY
@given(mapping=st.dictionaries(mixed_keys, mixed_values, max_size=8))
def test_fast_path_agrees_with_the_full_walk(mapping):
    policy = RedactionPolicy()
    expected = {k: policy.redact(v, key=k) for k, v in mapping.items()}
    assert policy.redact_mapping(mapping) == expected  # cold: every key decided
    assert policy.redact_mapping(mapping) == expected  # warm: known keys, fast path when clean
    assert policy.redact(mapping) == expected


@PROPERTY
@given(
    message=st.one_of(st.text(max_size=40), st.sampled_from(["paid with Bearer abcdefgh", "card 4111 1111 1111 1111"])),
    mapping=st.dictionaries(mixed_keys, mixed_values, max_size=8),
)
def test_message_and_fields_in_one_pass_agree_with_the_separate_calls(message, mapping):
    policy = RedactionPolicy()
    expected = (policy.redact_text(message), {k: policy.redact(v, key=k) for k, v in mapping.items()})
    assert policy.redact_message_and_fields(message, mapping) == expected  # cold
    assert policy.redact_message_and_fields(message, mapping) == expected  # warm: cached clean strings


# --- text patterns ------------------------------------------------------------------------------


@PROPERTY
@given(card=luhn_cards(), before=st.text(max_size=20), after=st.text(max_size=20), b=BEFORE, a=AFTER)
def test_luhn_valid_cards_never_survive(card, before, after, b, a):
    digits, written = card
    assert luhn_valid(digits)
    surround = (before + after).replace(" ", "").replace("-", "")
    assume(digits not in surround)
    out = POLICY.redact_text(before + b + written + a + after)
    assert written not in out
    assert digits not in out
    assert digits not in out.replace(" ", "").replace("-", "")


@PROPERTY
@given(
    card=luhn_cards(),
    sep=st.sampled_from([" ", "-"]),
    before=st.lists(st.text(alphabet="0123456789", min_size=1, max_size=4), max_size=3),
    after=st.lists(st.text(alphabet="0123456789", min_size=1, max_size=4), max_size=3),
)
def test_luhn_valid_cards_next_to_other_digit_groups_never_survive(card, sep, before, after):
    """``qty 3 4111-1111-1111-1111``, ``4111 1111 1111 1111 12/28``: neighbours never shield a card."""
    digits, _ = card
    written = sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    text = "x " + "".join(g + sep for g in before) + written + "".join(sep + g for g in after) + " y"
    out = POLICY.redact_text(text)
    assert written not in out
    assert digits not in out.replace(" ", "").replace("-", "")


@PROPERTY
@given(
    digits=st.lists(st.integers(0, 9), min_size=13, max_size=19).map(lambda ds: "".join(map(str, ds))),
    before=plain_text,
    after=plain_text,
)
def test_luhn_invalid_digit_runs_pass_unchanged(digits, before, after):
    assume(not luhn_valid(digits))
    text = f"{before} order #{digits}; {after}"
    assume(not _CARD_LIKE.search(before + after))
    assert POLICY.redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 ok", "card [REDACTED] ok"),
        ("card 4111-1111-1111-1111.", "card [REDACTED]."),
        ("amex 378282246310005", "amex [REDACTED]"),
        ("order 4111111111111112 shipped", "order 4111111111111112 shipped"),  # fails Luhn
        ("id 12345678901234567890123", "id 12345678901234567890123"),  # too long for a card
        ("short 4111 1111 1111", "short 4111 1111 1111"),  # 12 digits
        ("ts 2024-05-01 12:00:00, phone +1 415-555-0123", "ts 2024-05-01 12:00:00, phone +1 415-555-0123"),
        ("card 4111111111111111 12", "card [REDACTED] 12"),
        ("qty 3 4111-1111-1111-1111", "qty 3 [REDACTED]"),
        ("card 4111 1111 1111 1111 12/28", "card [REDACTED] 12/28"),
        ("4111111111111111 100 EUR", "[REDACTED] 100 EUR"),
        ("amex 3782 822463 10005 77", "amex [REDACTED] 77"),
        ("1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9", "1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9"),  # not laid out as a card
    ],
)
def test_card_examples(text, expected):
    assert POLICY.redact_text(text) == expected


b64token = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/", min_size=8)


@PROPERTY
@given(
    token=b64token,
    scheme=st.sampled_from(["Bearer", "bearer", "BEARER", "BeArEr"]),
    space=st.sampled_from([" ", "  ", "\t"]),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    end=st.sampled_from(["", " ", ",", "\n", '"', ";"]),
)
def test_bearer_tokens_are_removed(token, scheme, space, before, after, end):
    assume(token not in before + after)
    out = POLICY.redact_text(f"{before} Authorization: {scheme}{space}{token}{end}{after}")
    assert token not in out
    assert f"{scheme}{space}{REDACTED}" in out


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@PROPERTY
@given(
    claims=st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=3),
    signature=st.binary(min_size=8, max_size=40),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    sep=st.sampled_from([" ", "\n", '"', ",", "=", ":"]),
)
def test_jwts_are_removed(claims, signature, before, after, sep):
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    jwt = f"{header}.{payload}.{_b64url(signature)}"
    assume(_b64url(signature) not in before + after)
    out = POLICY.redact_text(before + sep + jwt + sep + after)
    assert jwt not in out
    assert f"{payload}.{_b64url(signature)}" not in out
    assert _b64url(signature) not in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic [REDACTED]"),
        ("basic\tQWxhZGRpbjpvcGVuIHNlc2FtZQ==, next", "basic\t[REDACTED], next"),
        ("the basic plan was chosen", "the basic plan was chosen"),  # not base64 of user:pass
        ("Bearer abc.def-123", "Bearer [REDACTED]"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln rest", "token [REDACTED] rest"),
        ("plain text stays", "plain text stays"),
        ("", ""),
    ],
)
def test_text_examples(text, expected):
    assert POLICY.redact_text(text) == expected


@PROPERTY
@given(text=st.text())
def test_redact_text_is_total_and_idempotent(text):
    once = POLICY.redact_text(text)
    assert isinstance(once, str)
    assert POLICY.redact_text(once) == once


@PROPERTY
@given(text=plain_text)
def test_plain_text_is_unchanged(text):
    assert POLICY.redact_text(text) == text


def test_urls_inside_text():
    text = "fetching https://bob:hunter2@files.example.com/a?X-Amz-Signature=abc&x=1 failed"
    assert POLICY.redact_text(text) == (
        "fetching https://REDACTED:REDACTED@files.example.com/a?X-Amz-Signature=REDACTED&x=1 failed"
    )
    assert POLICY.redact_text("GET /dl?sig=abc123 HTTP/1.1") == "GET /dl?sig=REDACTED HTTP/1.1"


def test_patterns_can_be_turned_off():
    policy = RedactionPolicy(patterns=False)
    text = "Bearer abcdefgh 4111 1111 1111 1111"
    assert policy.redact_text(text) == text
    assert policy.redact({"note": text, "password": "x"}) == {"note": text, "password": REDACTED}
    assert policy.redact_url("https://u:p@h/?sig=1") == "https://REDACTED:REDACTED@h/?sig=REDACTED"


# --- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", URL_QUERY_KEYS)
def test_each_semconv_query_key_is_redacted_and_kept(key):
    url = f"https://s3.example.com/bucket/obj?a=1&{key}=value-1%2F2&b=2#frag"
    assert POLICY.redact_url(url) == f"https://s3.example.com/bucket/obj?a=1&{key}=REDACTED&b=2#frag"


def test_url_query_keys_are_exactly_the_semconv_seven():
    assert set(URL_QUERY_KEYS) == {
        "AWSAccessKeyId",
        "Signature",
        "sig",
        "X-Goog-Signature",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
    }
    assert len(URL_QUERY_KEYS) == 7


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/p?SIG=1&sig=2", "https://example.com/p?SIG=1&sig=REDACTED"),  # case-sensitive
        ("https://example.com/p?xsig=1&signature=2", "https://example.com/p?xsig=1&signature=2"),
        ("https://example.com/p?sig=", "https://example.com/p?sig="),
        ("https://user:pass@example.com/", "https://REDACTED:REDACTED@example.com/"),
        ("https://user@example.com:8443/x", "https://REDACTED:REDACTED@example.com:8443/x"),
        ("https://u:p@ss@example.com/", "https://REDACTED:REDACTED@example.com/"),
        ("http://u:p@[::1]:8080/?sig=a", "http://REDACTED:REDACTED@[::1]:8080/?sig=REDACTED"),
        ("https://example.com/a@b?c=d", "https://example.com/a@b?c=d"),  # '@' in the path is not userinfo
        ("https://example.com/?color=blue", "https://example.com/?color=blue"),
        ("/relative?Signature=abc", "/relative?Signature=REDACTED"),
    ],
)
def test_url_examples(url, expected):
    assert POLICY.redact_url(url) == expected


@pytest.mark.parametrize(
    "url", ["", "http://[::1", "://@", "%%%", "http://user:pa ss@host", "?&=", "http://\x00@\ud800", "a" * 10000]
)
def test_malformed_urls_do_not_raise(url):
    assert isinstance(POLICY.redact_url(url), str)


@PROPERTY
@given(url=st.text())
def test_redact_url_never_raises(url):
    out = POLICY.redact_url(url)
    assert isinstance(out, str)
    if "@" not in url and "=" not in url:
        assert out == url


def test_redact_url_with_non_string_returns_it():
    assert POLICY.redact_url(None) is None  # type: ignore[arg-type]


# --- headers ------------------------------------------------------------------------------------


def test_headers():
    headers = [
        ("Authorization", "Bearer abc"),
        ("cookie", "sid=1"),
        ("Set-Cookie", "a=b; HttpOnly"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("x-api-key", "k"),
        ("X-Auth-Token", "t"),
        ("Referer", "https://u:p@example.com/?sig=1"),
        ("Accept", "text/html"),
        ("X-Note", "Bearer zzz"),
    ]
    assert POLICY.redact_headers(headers) == [
        ("Authorization", REDACTED),
        ("cookie", REDACTED),
        ("Set-Cookie", REDACTED),
        ("Proxy-Authorization", REDACTED),
        ("x-api-key", REDACTED),
        ("X-Auth-Token", REDACTED),
        ("Referer", "https://REDACTED:REDACTED@example.com/?sig=REDACTED"),
        ("Accept", "text/html"),
        ("X-Note", f"Bearer {REDACTED}"),
    ]


def test_headers_accept_bytes_generators_and_skip_malformed_pairs():
    def gen() -> Iterator[Any]:
        yield (b"authorization", b"secret")
        yield (b"accept", b"*/*")
        yield ("only-one",)
        yield 42
        yield ("x-count", 3)

    assert POLICY.redact_headers(gen()) == [("authorization", REDACTED), ("accept", "*/*"), ("x-count", REDACTED)]
    assert POLICY.redact_headers(None) == []  # type: ignore[arg-type]


# --- policy construction ------------------------------------------------------------------------


def test_extend_returns_a_new_policy():
    extended = POLICY.extend(["customer_email", "Tenant-Phone", "orderNote"])
    assert extended is not POLICY
    for key in (
        "customer_email",
        "CUSTOMER-EMAIL",
        "billing.customer_email",
        "tenant_phone",
        "orderNote",
        "order_note",
    ):
        assert extended.is_denied(key)
        assert not POLICY.is_denied(key)
    assert extended.is_denied("password")
    assert extended.denied_keys > POLICY.denied_keys
    assert POLICY.extend().denied_keys == POLICY.denied_keys


def test_custom_denylist_replacement_and_query_keys():
    policy = RedactionPolicy(denied_keys=["pin"], replacement="***", url_query_keys=["token"])
    assert policy.redact({"pin": 1234, "password": "x"}) == {"pin": "***", "password": "x"}
    assert policy.redact_url("https://h/?token=a&sig=b") == "https://h/?token=REDACTED&sig=b"
    assert policy.redact_text("Bearer abc") == "Bearer ***"
    assert not policy.is_denied("xsrftoken")  # glued words only count while they are denied
    no_query = RedactionPolicy(url_query_keys=())
    assert no_query.redact_url("https://h/?sig=b") == "https://h/?sig=b"


@pytest.mark.parametrize("kwargs", [{"max_depth": -1}, {"max_depth": 1.5}, {"max_depth": True}, {"replacement": None}])
def test_bad_configuration_fails_at_construction(kwargs):
    with pytest.raises(ValueError):
        RedactionPolicy(**kwargs)


def test_repr_does_not_list_keys():
    assert repr(POLICY).startswith("RedactionPolicy(denied_keys=<")


# --- structures and hostile input ---------------------------------------------------------------


def test_container_types_are_kept():
    Point = namedtuple("Point", "x y")

    class Tags(list):  # type: ignore[type-arg]
        pass

    value = {
        "list": ["Bearer abcdefgh"],
        "tuple": ("a", "Bearer abcdefgh"),
        "point": Point("Bearer abcdefgh", 2),
        "set": {"Bearer abcdefgh"},
        "frozen": frozenset({"x"}),
        "tags": Tags(["Bearer abcdefgh"]),
        "ordered": OrderedDict(password="x"),
    }
    out = POLICY.redact(value)
    redacted = f"Bearer {REDACTED}"
    assert out["list"] == [redacted]
    assert out["tuple"] == ("a", redacted)
    assert type(out["point"]) is Point and out["point"] == Point(redacted, 2)
    assert out["set"] == {redacted}
    assert out["frozen"] == frozenset({"x"})
    assert type(out["tags"]) is Tags and out["tags"] == [redacted]
    assert out["ordered"] == {"password": REDACTED}


def test_denied_key_replaces_whole_nested_value():
    assert POLICY.redact({"credentials": {"user": "bob", "pw": ["x", {"y": 1}]}}) == {"credentials": REDACTED}
    assert POLICY.redact({"user": {"password": None}}) == {"user": {"password": REDACTED}}


def test_bytes_are_scanned_when_they_are_text():
    assert POLICY.redact(b"Bearer abcdefgh") == b"Bearer [REDACTED]"
    assert POLICY.redact(bytearray(b"Bearer abcdefgh")) == bytearray(b"Bearer [REDACTED]")
    assert POLICY.redact(b"\xff\xfe binary") == b"\xff\xfe binary"
    assert POLICY.redact(b"ok") == b"ok"


def test_cycles_do_not_raise():
    looped: list[Any] = [1]
    looped.append(looped)
    assert POLICY.redact(looped) == [1, REDACTED]
    node: dict[str, Any] = {"name": "n"}
    node["self"] = node
    assert POLICY.redact(node) == {"name": "n", "self": REDACTED}
    assert POLICY.redact_mapping(node) == {"name": "n", "self": REDACTED}
    shared = ["x"]
    assert POLICY.redact([shared, shared]) == [["x"], ["x"]]  # repeated, not cyclic


def test_deep_nesting_is_cut_at_max_depth_without_recursion_error():
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    out = POLICY.redact(deep)
    depth = 0
    while isinstance(out, list):
        out = out[0]
        depth += 1
    assert out == REDACTED
    assert depth == 32
    assert RedactionPolicy(max_depth=0).redact({"a": 1}) == REDACTED
    assert RedactionPolicy(max_depth=0).redact_mapping({"a": 1}) == {}
    assert RedactionPolicy(max_depth=0).redact("Bearer abcdefgh") == f"Bearer {REDACTED}"
    # Without a useful limit Python's own recursion limit is hit: that level fails closed, no exception.
    out = RedactionPolicy(max_depth=10**9).redact(deep)
    while isinstance(out, list):
        out = out[0]
    assert out == REDACTED


class Hostile:
    def __str__(self) -> str:
        raise RuntimeError("boom")

    def __repr__(self) -> str:
        raise RuntimeError("boom")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("boom")

    __hash__ = object.__hash__


class HostileStr(str):
    def lower(self) -> str:  # type: ignore[override]
        raise RuntimeError("boom")

    def __contains__(self, item: object) -> bool:
        raise RuntimeError("boom")

    def __hash__(self) -> int:
        raise RuntimeError("boom")


class BrokenMapping(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        return 1


def test_hostile_objects_never_raise():
    hostile = Hostile()
    assert POLICY.redact(hostile) is hostile
    assert POLICY.redact([hostile])[0] is hostile
    assert POLICY.redact({"k": hostile})["k"] is hostile
    assert POLICY.redact_mapping({"k": hostile})["k"] is hostile
    assert POLICY.redact(BrokenMapping()) == REDACTED
    assert POLICY.redact_mapping(BrokenMapping()) == {}
    assert POLICY.redact({"a": BrokenMapping(), "b": 1}) == {"a": REDACTED, "b": 1}
    text = HostileStr("Bearer abcdefgh")
    assert POLICY.redact_text(text) == f"Bearer {REDACTED}"
    assert POLICY.redact(text) == f"Bearer {REDACTED}"
    assert POLICY.is_denied(HostileStr("password"))
    assert POLICY.redact_text(None) is None  # type: ignore[arg-type]
    assert POLICY.redact_text("lone surrogate \ud800 Bearer abcdefgh") == f"lone surrogate \ud800 Bearer {REDACTED}"


def test_str_subclasses_come_back_unchanged_when_clean():
    class Tag(str):
        pass

    tag = Tag("checkout")
    assert POLICY.redact(tag) is tag


def test_a_single_string_is_one_key():
    assert POLICY.extend("tenant_email").is_denied("tenantEmail")
    policy = RedactionPolicy(denied_keys="pin", url_query_keys="token")
    assert policy.is_denied("card_pin")
    assert not policy.is_denied("p")
    assert policy.redact_url("https://h/?token=a&t=b") == "https://h/?token=REDACTED&t=b"


def test_fast_path_caches_stay_correct_past_their_limits():
    policy = RedactionPolicy()
    for i in range(5000):  # more keys and more short values than the caches hold
        record = {f"field_{i}": f"value-{i}", "action": "checkout", "count": i}
        assert policy.redact_mapping(record) == record
    assert policy.redact_mapping({"action": "checkout", "note": "Bearer abcdefgh"}) == {
        "action": "checkout",
        "note": f"Bearer {REDACTED}",
    }
    assert policy.redact_mapping({"action": "checkout", "Password": "x"}) == {
        "action": "checkout",
        "Password": REDACTED,
    }


def test_concurrent_use_is_safe():
    import threading

    policy = RedactionPolicy()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(2000):
                record = {f"k{(i * n) % 5000}": f"v{i}", "token": "t", "msg": "Bearer abcdefgh"}
                out = policy.redact_mapping(record)
                assert out["token"] == REDACTED and out["msg"] == f"Bearer {REDACTED}"
                assert out[f"k{(i * n) % 5000}"] == f"v{i}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_the_sdks_own_failure_warnings_are_redacted_in_the_record(caplog, monkeypatch):
    """A telemetry failure's text (an exporter endpoint with credentials) never reaches any handler raw."""
    import logging

    from bakhmach_obs import _runtime

    monkeypatch.setattr(_runtime._rate_limited, "_last", {})  # forget warnings earlier tests logged
    rt = _runtime.current()
    with caplog.at_level(logging.WARNING, logger="bakhmach_obs"):
        rt.report_error("exporter", ConnectionError("POST https://svc:Hunter2pass@collector:4318/v1/traces refused"))
    messages = [r.getMessage() for r in caplog.records if "telemetry failure" in r.getMessage()]
    assert messages, caplog.records
    assert "Hunter2pass" not in messages[0] and "REDACTED" in messages[0]
