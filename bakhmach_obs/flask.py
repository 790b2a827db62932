"""Flask integration: ``init_app(app)`` wraps the app in the WSGI middleware and labels routes.

:func:`init_app` wraps ``app.wsgi_app`` in :class:`bakhmach_obs.wsgi.ObservabilityMiddleware`
(same options) and connects two Flask signals for this app:

* ``request_started`` (after URL matching, before any ``before_request`` hook, so a hook that
  answers early still gets its route) records ``request.url_rule.rule``, Flask's own template
  such as ``/users/<int:user_id>``, as the route label. It is kept as Flask writes it, like
  OpenTelemetry's Flask instrumentation does; blueprint prefixes are part of it, a WSGI mount
  prefix (``SCRIPT_NAME``) is not. A 405 (the path matches a rule, the method does not) keeps
  that rule; no matching rule (404) means ``__unmatched__``.
* ``got_request_exception`` records the exception of an unhandled error, so the 500 response
  Flask builds from it carries ``error.type``; an exception an ``errorhandler`` turned into a
  response below 500 is not an error.

Calling it twice on the same app neither wraps twice nor counts twice: the second call returns
the middleware of the first, whose options stay in force.

Example:
    >>> from flask import Flask
    >>> from bakhmach_obs.flask import init_app
    >>> app = Flask("shop")
    >>> middleware = init_app(app, exclude_paths=["/internal/ping"])
    >>> init_app(app) is middleware
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from re import Pattern
from typing import TYPE_CHECKING, Any

from flask import Flask, got_request_exception, request, request_started
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.routing import Rule

from .wsgi import ERROR_KEY, ROUTE_KEY, ObservabilityMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["init_app"]

_EXTENSION = "bakhmach_obs"


def _record_route(sender: Flask, **extra: Any) -> None:
    rule = request.url_rule
    if rule is None:
        rule = _rule_for_other_method(sender)
    if rule is not None:
        request.environ[ROUTE_KEY] = rule.rule


def _rule_for_other_method(app: Flask) -> Rule | None:
    """The rule a 405 request hit: matched again with a method it allows (405s only, so rarely)."""
    error = request.routing_exception
    if not isinstance(error, MethodNotAllowed) or not error.valid_methods:
        return None
    try:
        adapter = app.create_url_adapter(request)
        if adapter is None:
            return None
        method = next(iter(error.valid_methods))
        matched: tuple[Rule, Any] = adapter.match(method=method, return_rule=True)
    except Exception:  # noqa: BLE001 - no route label rather than a failed request
        return None
    return matched[0]


def _record_error(sender: Flask, exception: BaseException | None = None, **extra: Any) -> None:
    if exception is not None:
        request.environ[ERROR_KEY] = exception


def init_app(
    app: Flask,
    *,
    exclude_paths: Iterable[str] = (),
    exclude_patterns: Iterable[str | Pattern[str]] = (),
    exclude_defaults: bool = True,
    access_log: bool = True,
    correlation_header: str | None = "X-Correlation-ID",
    route_resolver: Callable[[WSGIEnvironment], str | None] | None = None,
) -> ObservabilityMiddleware:
    """Instrument a Flask app: metrics by route template, a SERVER span, correlation id, access log.

    The options are those of :class:`bakhmach_obs.wsgi.ObservabilityMiddleware`. Returns the
    middleware now wrapping ``app.wsgi_app``; a repeated call returns the same one unchanged.
    """
    existing = app.extensions.get(_EXTENSION)
    if isinstance(existing, ObservabilityMiddleware):
        return existing
    current = app.wsgi_app
    if isinstance(current, ObservabilityMiddleware):  # wrapped by hand already
        middleware = current
    else:
        middleware = ObservabilityMiddleware(
            current,
            exclude_paths=exclude_paths,
            exclude_patterns=exclude_patterns,
            exclude_defaults=exclude_defaults,
            access_log=access_log,
            correlation_header=correlation_header,
            route_resolver=route_resolver,
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
    # blinker keys receivers by identity: connecting the module functions again is a no-op
    request_started.connect(_record_route, app)
    got_request_exception.connect(_record_error, app)
    app.extensions[_EXTENSION] = middleware
    return middleware
