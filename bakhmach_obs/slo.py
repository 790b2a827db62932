"""Service level objectives: the model, the YAML file format and the error-budget maths.

An :class:`SLO` is a name, a target in (0, 1), a window (30 days by default), an SLI and the
labels it is tracked under: the ``service`` and, optionally, a ``feature`` (an HTTP route, an
instrumented function or a health check). Three SLI kinds are built from the SDK's own metrics:

- ``availability``: successful health checks (``source="health"``, the default) or non-5xx HTTP
  responses (``source="http"``);
- ``success_ratio``: HTTP 2xx responses over all requests (``source="http"``, the default) or
  ``function_calls_total`` with ``result="ok"`` over all calls (``source="function"``);
- ``latency``: the share of requests (or calls) faster than ``threshold`` seconds. The threshold
  becomes a bucket boundary of the duration histogram when the SLO is passed to ``configure()``,
  so the generated rules always have an exact ``le``.

Our metrics carry no service label; Prometheus adds the scrape job. An SLO's series are therefore
selected by ``{job="<service>"}`` unless ``selector=`` gives other label matchers.

Example:
    >>> from bakhmach_obs.slo import SLO, error_budget, format_duration
    >>> slo = SLO(name="checkout-availability", service="checkout", target=0.999, sli="availability")
    >>> format_duration(error_budget(slo.target, slo.window))
    '43m12s'
    >>> slo.source, slo.label_selector()
    ('health', {'job': 'checkout'})
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigurationError

__all__ = [
    "DEFAULT_WINDOW",
    "SLI_KINDS",
    "SLI_SOURCES",
    "SLO",
    "SLOFileError",
    "budget_remaining",
    "burn_rate",
    "check_unique",
    "error_budget",
    "error_ratio",
    "format_duration",
    "load_slos",
    "parse_duration",
    "parse_slos",
]

#: The SLO window when none is given (the seed's monthly budget).
DEFAULT_WINDOW = "30d"
#: SLI kinds and, for each, the metric sources it can be computed from (the first is the default).
SLI_SOURCES: dict[str, tuple[str, ...]] = {
    "availability": ("health", "http"),
    "success_ratio": ("http", "function"),
    "latency": ("http", "function"),
}
SLI_KINDS = tuple(SLI_SOURCES)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION_PART = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_MAX_WINDOW_SECONDS = timedelta.max.total_seconds()
_UNIT_SECONDS = {"y": 365 * 86400.0, "w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


# --- durations ----------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration (``30d``, ``1h30m``, ``500ms``).

    Raises:
        ValueError: ``text`` is not a positive Prometheus duration.

    Example:
        >>> parse_duration("1h30m"), parse_duration("500ms")
        (5400.0, 0.5)
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a duration: {text!r}")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or total <= 0:
        raise ValueError(f"not a positive Prometheus duration (like 30d, 6h, 5m, 1h30m): {text!r}")
    return total


def format_duration(value: timedelta | float) -> str:
    """A compact duration (``43m12s``, ``8h45m36s``, ``1d``); sub-second parts are rounded to ms.

    Example:
        >>> format_duration(timedelta(minutes=43, seconds=12)), format_duration(0.25)
        ('43m12s', '250ms')
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


# --- budget maths -------------------------------------------------------------------------------


def _check_target(target: float) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
        raise ValueError(f"an SLO target is a number strictly between 0 and 1, got {target!r}")
    return float(target)


def error_budget(target: float, window: str | float | timedelta = DEFAULT_WINDOW) -> timedelta:
    """The time the service may be failing within ``window`` and still meet ``target``.

    ``window`` is a Prometheus duration, seconds or a ``timedelta``.

    Example:
        >>> error_budget(0.999, "30d")
        datetime.timedelta(seconds=2592)
        >>> format_duration(error_budget(0.999, "365d"))
        '8h45m36s'
    """
    _check_target(target)
    if isinstance(window, timedelta):
        seconds = window.total_seconds()
    elif isinstance(window, str):
        seconds = parse_duration(window)
    else:
        try:
            seconds = float(window)
        except OverflowError:  # an int beyond the float range: refused below like infinity
            seconds = math.inf
    if not 0 < seconds <= _MAX_WINDOW_SECONDS:  # NaN, infinity and beyond what a timedelta holds too
        raise ValueError(f"the window must be a positive duration, got {window!r}")
    return timedelta(seconds=round((1.0 - target) * seconds, 6))


def error_ratio(good: float, total: float) -> float:
    """Share of bad events: ``(total - good) / total`` (0 when there were no events).

    Raises:
        ValueError: a count is negative or ``good`` exceeds ``total``.

    Example:
        >>> error_ratio(999, 1000)
        0.001
    """
    if good < 0 or total < 0 or good > total or math.isnan(good) or math.isnan(total):
        raise ValueError(f"counts must satisfy 0 <= good <= total, got good={good!r}, total={total!r}")
    if total == 0:
        return 0.0
    return (total - good) / total


def burn_rate(ratio: float, target: float) -> float:
    """How fast the budget burns: the error ratio over the budget ratio (1 = exactly on budget).

    Example:
        >>> round(burn_rate(0.0144, 0.999), 6)
        14.4
    """
    _check_target(target)
    if ratio < 0 or math.isnan(ratio):
        raise ValueError(f"an error ratio is >= 0, got {ratio!r}")
    return ratio / (1.0 - target)


def budget_remaining(good: float, total: float, target: float) -> float:
    """Share of the window's error budget still unspent: 1 untouched, 0 spent, negative overspent.

    Example:
        >>> round(budget_remaining(good=9995, total=10000, target=0.999), 6)
        0.5
    """
    return 1.0 - burn_rate(error_ratio(good, total), target)


# --- the model ----------------------------------------------------------------------------------


def _fail(slo: str, setting: str, value: object, accepted: str) -> ConfigurationError:
    return ConfigurationError(f"SLO {slo!r} {setting}", value, accepted)


@dataclass(frozen=True)
class SLO:
    """One service level objective.

    Attributes:
        name: unique name, the ``slo`` label of every recorded series (letters, digits, ``-_.``).
        target: the objective, strictly between 0 and 1 (``0.999``).
        service: the service it is tracked for; selects ``{job="<service>"}`` by default.
        sli: ``availability``, ``success_ratio`` or ``latency``.
        source: ``health``, ``http`` or ``function`` (default: the first of :data:`SLI_SOURCES`).
        feature: an HTTP route template, a function name or a health-check name to narrow the SLI to.
        threshold: latency SLOs only, in seconds: requests at or under it are good.
        window: the budget window, a Prometheus duration (default ``30d``).
        selector: label matchers selecting the service's series, replacing ``{job: service}``.
        description: free text carried into alerts and exports.

    Raises:
        ConfigurationError: at construction, naming the SLO, the field and what is accepted.
    """

    name: str
    target: float
    service: str
    sli: str = "success_ratio"
    source: str = ""
    feature: str | None = None
    threshold: float | None = None
    window: str = DEFAULT_WINDOW
    selector: Mapping[str, str] | None = field(default=None, hash=False, compare=False)
    description: str = ""
    _selector: tuple[tuple[str, str], ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail(str(name), "name", name, "1-100 letters, digits, '-', '_' or '.', not starting with - _ .")
        try:
            _check_target(self.target)
        except ValueError:
            raise _fail(name, "target", self.target, "a number strictly between 0 and 1, such as 0.999") from None
        if not isinstance(self.service, str) or not self.service.strip():
            raise _fail(name, "service", self.service, "a non-empty string")
        if self.sli not in SLI_SOURCES:
            raise _fail(name, "sli", self.sli, ", ".join(SLI_KINDS))
        sources = SLI_SOURCES[self.sli]
        if not self.source:
            object.__setattr__(self, "source", sources[0])
        elif self.source not in sources:
            raise _fail(name, "source", self.source, f"for a {self.sli} SLI: " + ", ".join(sources))
        if self.feature is not None and (not isinstance(self.feature, str) or not self.feature):
            raise _fail(name, "feature", self.feature, "a non-empty string (route, function or check name)")
        if self.sli == "latency":
            t = self.threshold
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
                raise _fail(name, "threshold", t, "a positive number of seconds (latency SLOs need one)")
            object.__setattr__(self, "threshold", float(t))
        elif self.threshold is not None:
            raise _fail(name, "threshold", self.threshold, "nothing: only latency SLOs have a threshold")
        try:
            parse_duration(self.window)
        except ValueError:
            raise _fail(name, "window", self.window, "a Prometheus duration such as 30d, 28d, 7d or 1h") from None
        matchers = {"job": self.service} if self.selector is None else self.selector
        if not isinstance(matchers, Mapping) or not matchers:
            raise _fail(name, "selector", self.selector, "a non-empty mapping of label name to value")
        for key, value in matchers.items():
            if not isinstance(key, str) or not _LABEL.match(key) or key == "__name__" or not isinstance(value, str):
                raise _fail(name, "selector", dict(matchers), "label names (a-z, 0-9, _) mapped to string values")
        object.__setattr__(self, "_selector", tuple(sorted(matchers.items())))
        object.__setattr__(self, "selector", None if self.selector is None else dict(self._selector))

    def label_selector(self) -> dict[str, str]:
        """The label matchers selecting this service's series (``{"job": service}`` by default)."""
        return dict(self._selector)

    @property
    def window_seconds(self) -> float:
        """The window in seconds."""
        return parse_duration(self.window)

    @property
    def budget(self) -> float:
        """The error-budget ratio, ``1 - target`` (rounded to 12 digits: 0.999 gives 0.001)."""
        return round(1.0 - self.target, 12)

    def labels(self) -> dict[str, str]:
        """The labels every generated series and alert of this SLO carries."""
        from . import conventions as c

        out = {c.LABEL_SLO: self.name, c.LABEL_SLO_SERVICE: self.service}
        if self.feature is not None:
            out[c.LABEL_SLO_FEATURE] = self.feature
        return out


# --- the YAML file ------------------------------------------------------------------------------


class SLOFileError(ConfigurationError):
    """An SLO file is invalid; the message names the file, the line and the field.

    Example:
        >>> text = "slos:\\n  - name: api\\n    service: api\\n    sli: availability\\n    target: 1.5\\n"
        >>> try:
        ...     parse_slos(text, source="slo.yaml")
        ... except SLOFileError as exc:
        ...     print(exc)
        slo.yaml:5: slos[0].target: invalid value 1.5; accepted: a number strictly between 0 and 1 ...
    """

    def __init__(self, source: str, line: int, field: str, value: object, accepted: str) -> None:
        super().__init__(field, value, accepted)
        self.source = source
        self.line = line
        self.field = field
        self.args = (f"{source}:{line}: {field}: invalid value {value!r}; accepted: {accepted}",)


_TOP_KEYS = ("version", "defaults", "slos")
_DEFAULT_KEYS = ("service", "window", "selector")
_SLO_KEYS = ("name", "service", "target", "sli", "feature", "window", "selector", "description")
_SLI_KEYS = ("kind", "source", "threshold")


class _Reader:
    """Walks a composed YAML node tree, keeping line numbers for error messages."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        try:
            self.loader = yaml.SafeLoader(text)  # checks the characters: raises ReaderError too
            self.root = self.loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            raise SLOFileError(source, line, "(syntax)", str(exc.problem), "valid YAML") from None
        except yaml.reader.ReaderError as exc:  # a control character: no mark, a position
            line = text.count("\n", 0, exc.position) + 1
            raise SLOFileError(
                source, line, "(syntax)", exc.character, "YAML text without control characters"
            ) from None
        except yaml.YAMLError as exc:
            raise SLOFileError(source, 1, "(syntax)", str(exc), "valid YAML") from None

    def error(self, node: yaml.Node | None, path: str, value: object, accepted: str) -> SLOFileError:
        line = node.start_mark.line + 1 if node is not None else 1
        return SLOFileError(self.source, line, path, value, accepted)

    def value(self, node: yaml.Node, path: str) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
            # an explicit tag on a malformed scalar (!!float x, !!timestamp 2001-13-45, !!binary %)
            # makes PyYAML's constructors raise any of these
            raise self.error(
                node, path, node.value if isinstance(node, yaml.ScalarNode) else node.tag, str(exc)
            ) from None

    def mapping(self, node: yaml.Node | None, path: str, keys: Sequence[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(
                node,
                path or "(top level)",
                None if node is None else self.value(node, path or "(top level)"),
                "a mapping",
            )
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node, path or "(top level)")
            if key not in keys:
                raise self.error(key_node, f"{path}.{key}" if path else str(key), key, "one of " + ", ".join(keys))
            if key in out:
                raise self.error(key_node, f"{path}.{key}" if path else str(key), key, "each key once")
            out[key] = value_node
        return out

    def dispose(self) -> None:
        self.loader.dispose()


def _str(r: _Reader, node: yaml.Node, path: str) -> str:
    value = r.value(node, path)
    if not isinstance(value, str) or not value.strip():
        raise r.error(node, path, value, "a non-empty string")
    return value.strip()


def _target(r: _Reader, node: yaml.Node, path: str) -> float:
    value = r.value(node, path)
    accepted = "a number strictly between 0 and 1 (0.999) or a percentage string ('99.9%')"
    number: float | None = None
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = round(float(value.strip()[:-1]) / 100.0, 12)
        except ValueError:
            number = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:  # no float() of a huge int
        number = float(value)
    if number is None or not 0.0 < number < 1.0:
        raise r.error(node, path, value, accepted)
    return number


def _window(r: _Reader, node: yaml.Node, path: str) -> str:
    value = r.value(node, path)
    try:
        parse_duration(value)
    except ValueError:
        raise r.error(node, path, value, "a Prometheus duration such as 30d, 28d, 7d or 1h") from None
    return str(value)


def _threshold(r: _Reader, node: yaml.Node, path: str) -> float:
    value = r.value(node, path)
    accepted = "a positive number of seconds (0.5) or a duration ('500ms', '1s')"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= sys.float_info.max:
        return float(value)
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-05 (no dot) as a string
            number = float(value.strip())
        except ValueError:
            try:
                return parse_duration(value.strip())
            except ValueError:
                pass
        else:
            if 0 < number < math.inf:
                return number
    raise r.error(node, path, value, accepted)


def _selector(r: _Reader, node: yaml.Node, path: str) -> dict[str, str]:
    value = r.value(node, path)
    if (
        not isinstance(value, dict)
        or not value
        or not all(isinstance(k, str) and _LABEL.match(k) and k != "__name__" for k in value)
        or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value.values())
    ):
        raise r.error(node, path, value, "a non-empty mapping of label names to values")
    return {k: str(v) for k, v in value.items()}


def _one_slo(r: _Reader, node: yaml.Node, path: str, defaults: dict[str, Any]) -> SLO:
    keys = r.mapping(node, path, _SLO_KEYS)
    for required in ("name", "target", "sli"):
        if required not in keys:
            raise r.error(node, f"{path}.{required}", None, "a value (the field is required)")
    kwargs: dict[str, Any] = dict(defaults)
    kwargs["name"] = _str(r, keys["name"], f"{path}.name")
    kwargs["target"] = _target(r, keys["target"], f"{path}.target")
    for key in ("service", "feature", "description"):
        if key in keys:
            kwargs[key] = _str(r, keys[key], f"{path}.{key}")
    if "window" in keys:
        kwargs["window"] = _window(r, keys["window"], f"{path}.window")
    if "selector" in keys:
        kwargs["selector"] = _selector(r, keys["selector"], f"{path}.selector")
    if "service" not in kwargs:
        raise r.error(node, f"{path}.service", None, "a service (here or under defaults)")
    sli_node = keys["sli"]
    if isinstance(sli_node, yaml.ScalarNode):
        sli: dict[str, yaml.Node] = {"kind": sli_node}
    else:
        sli = r.mapping(sli_node, f"{path}.sli", _SLI_KEYS)
        if "kind" not in sli:
            raise r.error(sli_node, f"{path}.sli.kind", None, "one of " + ", ".join(SLI_KINDS))
    kind = r.value(sli["kind"], f"{path}.sli.kind")
    if not isinstance(kind, str) or kind not in SLI_SOURCES:
        raise r.error(sli["kind"], f"{path}.sli.kind", kind, ", ".join(SLI_KINDS))
    kwargs["sli"] = kind
    if "source" in sli:
        source = r.value(sli["source"], f"{path}.sli.source")
        if source not in SLI_SOURCES[kind]:
            raise r.error(sli["source"], f"{path}.sli.source", source, f"for {kind}: " + ", ".join(SLI_SOURCES[kind]))
        kwargs["source"] = source
    if kind == "latency":
        if "threshold" not in sli:
            raise r.error(sli_node, f"{path}.sli.threshold", None, "a threshold (latency SLIs need one)")
        kwargs["threshold"] = _threshold(r, sli["threshold"], f"{path}.sli.threshold")
    elif "threshold" in sli:
        raise r.error(
            sli["threshold"],
            f"{path}.sli.threshold",
            r.value(sli["threshold"], f"{path}.sli.threshold"),
            "only for latency SLIs",
        )
    try:
        return SLO(**kwargs)
    except ConfigurationError as exc:  # a constraint the field parsers did not cover
        raise r.error(node, path, exc.value, exc.accepted) from None


def parse_slos(text: str, *, source: str = "<string>") -> list[SLO]:
    """SLOs from the YAML text of an SLO file (schema in ``docs/slo.md``).

    Raises:
        SLOFileError: the text is not valid YAML or breaks the schema; the message reads
            ``<source>:<line>: <field>: invalid value ...; accepted: ...``.

    Example:
        >>> slos = parse_slos('''
        ... defaults: {service: checkout}
        ... slos:
        ...   - name: checkout-latency
        ...     target: 99%
        ...     sli: {kind: latency, threshold: 500ms}
        ... ''')
        >>> slos[0].threshold, slos[0].target, slos[0].service
        (0.5, 0.99, 'checkout')
    """
    r = _Reader(text, source)
    try:
        if r.root is None:
            raise SLOFileError(source, 1, "slos", None, "a mapping with a 'slos' list")
        top = r.mapping(r.root, "", _TOP_KEYS)
        if "version" in top and r.value(top["version"], "version") != 1:
            raise r.error(top["version"], "version", r.value(top["version"], "version"), "1")
        defaults: dict[str, Any] = {}
        if "defaults" in top:
            dkeys = r.mapping(top["defaults"], "defaults", _DEFAULT_KEYS)
            if "service" in dkeys:
                defaults["service"] = _str(r, dkeys["service"], "defaults.service")
            if "window" in dkeys:
                defaults["window"] = _window(r, dkeys["window"], "defaults.window")
            if "selector" in dkeys:
                defaults["selector"] = _selector(r, dkeys["selector"], "defaults.selector")
        items = top.get("slos")
        if not isinstance(items, yaml.SequenceNode) or not items.value:
            value = None if items is None else r.value(items, "slos")
            raise r.error(items if items is not None else r.root, "slos", value, "a non-empty list of SLOs")
        slos: list[SLO] = []
        seen: set[str] = set()
        for i, item in enumerate(items.value):
            slo = _one_slo(r, item, f"slos[{i}]", defaults)
            if slo.name in seen:
                raise r.error(item, f"slos[{i}].name", slo.name, "a name not used by another SLO of the file")
            seen.add(slo.name)
            slos.append(slo)
        return slos
    finally:
        r.dispose()


def load_slos(path: str | Path) -> list[SLO]:
    """SLOs from an SLO file.

    Raises:
        SLOFileError: the file cannot be read or is invalid (the message names line and field).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SLOFileError(str(path), 0, "(file)", str(path), f"a readable UTF-8 YAML file ({exc})") from None
    return parse_slos(text, source=str(path))


def check_unique(slos: Iterable[SLO]) -> list[SLO]:
    """``slos`` as a list, or :class:`~bakhmach_obs.errors.ConfigurationError` on a repeated name."""
    out: list[SLO] = []
    seen: set[str] = set()
    for slo in slos:
        if not isinstance(slo, SLO):
            raise ConfigurationError("slos", slo, "bakhmach_obs.slo.SLO objects")
        if slo.name in seen:
            raise ConfigurationError("slos", slo.name, "SLO names that are unique")
        seen.add(slo.name)
        out.append(slo)
    return out
