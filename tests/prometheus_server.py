"""A real Prometheus (Debian's package) started by a test on 127.0.0.1 with a temporary data dir.

Shared by the rule, dashboard and stack end-to-end tests::

    with PrometheusServer(tmp_path, scrape_targets=["127.0.0.1:8000"], rule_files=[rules]) as prom:
        prom.wait_for_targets_up()
        value = prom.query_scalar('sum(up)')

The scrape and evaluation intervals default to 1 s; Prometheus still takes ~6 s to the first
scrape (see shared/design/RELIABILITY.md), so poll with :meth:`wait_until` rather than sleeping.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import need_binary

_T = TypeVar("_T")


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, and SIGKILL when ``proc`` has not exited 10 s later."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """Start ``prometheus`` on a free loopback port; stop it (and delete its data) on exit.

    Either pass ``config_file`` (a complete prometheus.yml, e.g. a generated one), or let it write
    one scraping ``scrape_targets`` every ``interval`` and loading ``rule_files``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        scrape_targets: Sequence[str] = (),
        rule_files: Sequence[Path] = (),
        config_file: Path | None = None,
        interval: str = "1s",
        job: str = "app",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = need_binary("prometheus")
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.job = job
        if config_file is None:
            config_file = self.workdir / "prometheus.yml"
            config = {
                "global": {"scrape_interval": interval, "evaluation_interval": interval},
                "rule_files": [str(p) for p in rule_files],
                "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(scrape_targets)}]}]
                if scrape_targets
                else [],
            }
            # JSON is valid YAML: no YAML dependency needed to write the file.
            config_file.write_text(json.dumps(config, indent=2))
        self.config_file = config_file
        self.extra_args = list(extra_args)
        self._data = self.workdir / "prometheus-data"
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "prometheus.log"

    # --- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> PrometheusServer:
        self._data.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self._data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.wait_until(lambda: self._get_text("/-/ready").startswith("Prometheus"), timeout=20, what="ready")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        shutil.rmtree(self._data, ignore_errors=True)

    def reload(self) -> None:
        req = urllib.request.Request(self.url + "/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    # --- HTTP API ------------------------------------------------------------------------------
    def _get_text(self, path: str) -> str:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return str(resp.read().decode())
        except OSError:
            return ""

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data`` (raises on an API error)."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=15) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the API's error text
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus API {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (``[{"metric": {...}, "value": [ts, "1.5"]}, ...]``)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [data]
        return result

    def query_values(self, expr: str) -> list[float]:
        return [float(r["value"][1]) for r in self.query(expr)]

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    def wait_for_targets_up(self, timeout: float = 30) -> list[dict[str, Any]]:
        def all_up() -> list[dict[str, Any]] | None:
            targets = self.targets()
            return targets if targets and all(t["health"] == "up" for t in targets) else None

        return self.wait_until(all_up, timeout=timeout, what="all targets up")

    def wait_until(self, predicate: Callable[[], _T], *, timeout: float = 30, what: str = "condition") -> _T:
        """Poll ``predicate`` every 0.25 s until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self._proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                last = predicate()
            except AssertionError as exc:
                last = exc
            if last and not isinstance(last, AssertionError):
                return last
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
