"""gunicorn server hooks for multiprocess metrics (``PROMETHEUS_MULTIPROC_DIR``).

With ``PROMETHEUS_MULTIPROC_DIR`` set, every worker writes its values to mmap files named after its
pid and ``/metrics`` sums them (see ``docs/multiprocess.md``). Two things need the master process:

* :func:`on_starting` wipes the ``*.db`` files a previous run left behind, before any worker
  starts; otherwise counters would carry on from a run that no longer exists;
* :func:`child_exit` removes the live-gauge files of a worker that exited
  (``prometheus_client.multiprocess.mark_process_dead``), so ``http_server_active_requests`` and
  the other ``livesum`` gauges drop what a crashed or recycled worker was doing. Counters and
  histograms of dead workers are kept: they stay part of the totals.

Use the module as the gunicorn configuration, or import the hooks into yours::

    gunicorn -w 4 -c python:bakhmach_obs.gunicorn myapp:app

    # gunicorn.conf.py
    from bakhmach_obs.gunicorn import child_exit, on_starting

Both hooks do nothing when ``PROMETHEUS_MULTIPROC_DIR`` is unset. gunicorn is never imported
here: the hooks only use the objects gunicorn passes them.

Example:
    >>> import os, tempfile
    >>> from bakhmach_obs.gunicorn import clean_multiproc_dir
    >>> path = tempfile.mkdtemp()
    >>> for name in ("counter_101.db", "gauge_livesum_101.db", "notes.txt"):
    ...     open(os.path.join(path, name), "wb").close()
    >>> clean_multiproc_dir(path)
    2
    >>> os.listdir(path)
    ['notes.txt']
    >>> import shutil; shutil.rmtree(path)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

__all__ = ["child_exit", "clean_multiproc_dir", "on_starting"]

_log = logging.getLogger(__name__)
_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _Worker(Protocol):
    """What :func:`child_exit` needs from gunicorn's worker object."""

    pid: int


def _multiproc_dir() -> str | None:
    return os.environ.get(_ENV) or None


def _warn(server: Any, message: str, *args: object) -> None:
    """Log through gunicorn's error log when the server has one, else the module logger."""
    log = getattr(server, "log", None)
    warning = getattr(log, "warning", None)
    if callable(warning):
        try:
            warning(message, *args)
            return
        except Exception:  # noqa: BLE001 - fall back to the stdlib logger
            pass
    _log.warning(message, *args)


def clean_multiproc_dir(path: str | os.PathLike[str] | None = None) -> int:
    """Remove the metric files (``*.db``) in the multiprocess directory; return how many.

    ``path`` defaults to ``PROMETHEUS_MULTIPROC_DIR``; with neither, nothing happens and 0 is
    returned. The directory is created when missing. Only ``*.db`` files directly inside it are
    removed, so pointing it at a shared directory by mistake costs nothing else. Call it once,
    in the process that starts the workers and before they start (gunicorn's ``on_starting``;
    for ``uvicorn --workers``, the shell that launches it).

    Raises:
        OSError: the directory cannot be created or a file cannot be removed. At start-up that is
            worth failing loudly for: the workers could not write their metrics either.
    """
    if path is None:
        path = _multiproc_dir()
        if path is None:
            return 0
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for file in directory.glob("*.db"):
        if file.is_file():
            try:
                file.unlink()
            except FileNotFoundError:  # removed concurrently: what we wanted anyway
                continue
            removed += 1
    return removed


def on_starting(server: Any) -> None:
    """gunicorn ``on_starting`` hook: wipe stale metric files before the workers start.

    Does nothing without ``PROMETHEUS_MULTIPROC_DIR``; raises :class:`OSError` when the
    directory cannot be prepared (gunicorn then exits with the error).
    """
    path = _multiproc_dir()
    if path is None:
        return
    removed = clean_multiproc_dir(path)
    info = getattr(getattr(server, "log", None), "info", None)
    if callable(info):
        info("bakhmach_obs: removed %d stale metric file(s) from %s", removed, path)


def child_exit(server: Any, worker: _Worker) -> None:
    """gunicorn ``child_exit`` hook: drop the live gauges of a worker that exited.

    Calls ``prometheus_client.multiprocess.mark_process_dead(worker.pid)`` when
    ``PROMETHEUS_MULTIPROC_DIR`` is set. Never raises: the hook runs in gunicorn's master, where an
    exception would stop the server; a failure is logged as a warning instead.
    """
    path = _multiproc_dir()
    if path is None:
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 - the master must survive whatever happens here
        _warn(server, "bakhmach_obs: could not mark worker %s dead in %s: %r", getattr(worker, "pid", "?"), path, exc)
