"""``/metrics`` endpoints: ASGI and WSGI apps and a standalone server.

All three negotiate the format (Prometheus text, or OpenMetrics, which carries exemplars, when
the scraper asks for it), gzip when the client accepts it, and aggregate every worker's values
when ``PROMETHEUS_MULTIPROC_DIR`` is set. The ASGI app renders in a worker thread: rendering a
large registry takes tens of milliseconds and must not stall the event loop.

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> from bakhmach_obs.exposition import render
    >>> body, content_type, encoding = render(CollectorRegistry(), accept="", accept_encoding="")
    >>> content_type
    'text/plain; version=0.0.4; charset=utf-8'
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from .metrics import is_multiprocess, multiprocess_registry

__all__ = ["metrics_asgi_app", "metrics_wsgi_app", "render", "serve_metrics"]


def _registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    if is_multiprocess():
        return multiprocess_registry()
    if registry is not None:
        return registry
    from ._runtime import current

    return current().registry


def render(registry: CollectorRegistry | None, *, accept: str, accept_encoding: str) -> tuple[bytes, str, str | None]:
    """Render the exposition for a request; returns ``(body, content_type, content_encoding)``.

    ``registry=None`` means the configured one (or the multiprocess aggregate).
    """
    encoder, content_type = choose_encoder(accept)
    body = encoder(_registry(registry))
    if gzip_accepted(accept_encoding) and len(body) > 1024:
        return gzip.compress(body, compresslevel=6), content_type, "gzip"
    return body, content_type, None


def metrics_asgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app serving the exposition (mount it at ``/metrics``).

    Example:
        ``app.mount("/metrics", bakhmach_obs.metrics_asgi_app())``
    """

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await _serve_lifespan(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await _asgi_respond(send, 405, b"method not allowed\n", "text/plain; charset=utf-8", None, [b"GET, HEAD"])
            return
        loop = asyncio.get_running_loop()
        body, content_type, encoding = await loop.run_in_executor(
            None,
            lambda: render(
                registry, accept=headers.get("accept", ""), accept_encoding=headers.get("accept-encoding", "")
            ),
        )
        if scope.get("method") == "HEAD":
            body = b""
        await _asgi_respond(send, 200, body, content_type, encoding, None)

    return app


async def _serve_lifespan(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Answer an ASGI ``lifespan`` scope (start-up and shutdown complete at once); ignore other scopes.

    For the SDK's small ASGI apps (``/metrics``, health) when they are served on their own.
    """
    if scope["type"] != "lifespan":
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _asgi_respond(
    send: Callable[..., Any],
    status: int,
    body: bytes,
    content_type: str,
    encoding: str | None,
    allow: list[bytes] | None,
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    if encoding:
        headers.append((b"content-encoding", encoding.encode()))
    headers.append((b"vary", b"Accept, Accept-Encoding"))
    if allow:
        headers.append((b"allow", allow[0]))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def metrics_wsgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving the exposition (route ``/metrics`` to it)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response(
                "405 Method Not Allowed", [("Content-Type", "text/plain; charset=utf-8"), ("Allow", "GET, HEAD")]
            )
            return [b"method not allowed\n"]
        body, content_type, encoding = render(
            registry, accept=environ.get("HTTP_ACCEPT", ""), accept_encoding=environ.get("HTTP_ACCEPT_ENCODING", "")
        )
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Vary", "Accept, Accept-Encoding"),
        ]
        if encoding:
            headers.append(("Content-Encoding", encoding))
        start_response("200 OK", headers)
        return [b"" if method == "HEAD" else body]

    return app


def serve_metrics(port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> Any:
    """Serve ``/metrics`` on a background thread (for workers without a web server).

    Returns the server; call ``.shutdown()`` on it to stop. Binds loopback unless told otherwise.
    """
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

    class _Threading(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = make_server(addr, port, metrics_wsgi_app(registry), _Threading, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="bakhmach-obs-metrics", daemon=True)
    thread.start()
    return server
