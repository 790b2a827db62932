"""A deployable monitoring stack for a service instrumented with this library.

:func:`generate` returns every file of the stack, by path relative to the output directory;
:func:`write` writes them, plus a ``.env`` holding a random Grafana admin password that is never
overwritten (unless ``force=True``). ``bakhmach-obs stack -o DIR`` is the command-line form.

The layout (``docker compose up -d`` in the output directory starts it)::

    docker-compose.yml                          every service, images pinned, no password inside
    .env / .env.example                         the Grafana admin password (0600) / a template
    .gitignore                                  keeps .env out of git
    prometheus/prometheus.yml                   scrape jobs, rule files, Alertmanager
    prometheus/rules/bakhmach-obs.rules.yml     recording + alerting rules (bakhmach_obs.rules)
    alertmanager/alertmanager.yml               routing by severity, inhibition, webhook receivers
    grafana/provisioning/datasources/datasources.yml   Prometheus, Jaeger, Elasticsearch
    grafana/provisioning/dashboards/dashboards.yml     the file provider for grafana/dashboards
    grafana/dashboards/*.json                   dashboards (bakhmach_obs.dashboards)
    logstash/pipeline/logstash.conf             the TCP/JSON-lines pipeline of bakhmach_obs.logstash

Paths inside ``prometheus.yml`` are relative (``rules/*.yml``), so the same file works in the
container (mounted at ``/etc/prometheus``) and for ``promtool check config`` in the output directory.

Example:
    >>> from bakhmach_obs.stack import StackOptions, IMAGES
    >>> options = StackOptions(targets=("host.docker.internal:8080",), job="backend")
    >>> options.targets
    ('host.docker.internal:8080',)
    >>> all(":" in image and not image.endswith(":latest") for image in IMAGES.values())
    True
    >>> StackOptions(targets=("no-port",))
    Traceback (most recent call last):
    ...
    bakhmach_obs.errors.ConfigurationError: invalid target: 'no-port'; accepted: host:port, e.g. ...
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .conventions import EXPORTER_PORTS, LABEL_DEPLOYMENT_ENVIRONMENT, LABEL_SLO, LABEL_SLO_SERVICE
from .errors import ConfigurationError

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_WEBHOOK_URL",
    "ENV_FILE",
    "IMAGES",
    "RULES_FILE",
    "SERVICES",
    "StackOptions",
    "WriteResult",
    "add_cli_arguments",
    "generate",
    "run_cli",
    "write",
]

#: Where Prometheus (in a container) finds a service listening on the Docker host: the seed's
#: backend port 8080, which is also what the examples listen on.
DEFAULT_TARGET = "host.docker.internal:8080"
#: Placeholder receiver: Alertmanager posts alerts here until you point it at a real one.
DEFAULT_WEBHOOK_URL = "http://host.docker.internal:5001/alerts"
#: The generated rule file, relative to the output directory.
RULES_FILE = "prometheus/rules/bakhmach-obs.rules.yml"
#: The secrets file docker compose reads for variable substitution (mode 0600, kept across runs).
ENV_FILE = ".env"

#: Pinned images, one per service. ``latest`` is never used: a stack that changes under you on
#: ``docker compose pull`` is not a stack you can debug. Bump these deliberately.
IMAGES: Mapping[str, str] = MappingProxyType(
    {
        "prometheus": "prom/prometheus:v3.7.3",
        "alertmanager": "prom/alertmanager:v0.34.1",
        "grafana": "grafana/grafana:12.4.2",
        "elasticsearch": "docker.elastic.co/elasticsearch/elasticsearch:8.19.16",
        "kibana": "docker.elastic.co/kibana/kibana:8.19.16",
        "logstash": "docker.elastic.co/logstash/logstash:8.19.16",
        "jaeger": "jaegertracing/all-in-one:1.74.0",
        "node-exporter": "prom/node-exporter:v1.10.2",
        "postgres-exporter": "prometheuscommunity/postgres-exporter:v0.20.1",
    }
)
#: The compose services: the seed's five (Prometheus, Grafana, Elasticsearch, Kibana, Jaeger)
#: plus Logstash, Alertmanager and the two exporters its rules and dashboards read.
SERVICES: tuple[str, ...] = tuple(IMAGES)

_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_JOB = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class StackOptions:
    """What varies between deployments; validated on construction (bad values raise ConfigurationError).

    Attributes:
        targets: ``host:port`` addresses of the service's ``/metrics`` endpoints, as seen from the
            Prometheus container (``host.docker.internal`` is the Docker host, on Linux too).
        job: the Prometheus job name of the service (the seed's ``backend``).
        metrics_path: the path of the exposition endpoint.
        slo_file: an SLO YAML file passed to the rule generator (only the alert catalogue, no SLO rules, when ``None``).
        webhook_url: where Alertmanager posts every alert (a placeholder by default).
        page_webhook_url: where page-severity alerts go instead, when set.
        publish_address: host address the stack's ports are published on; loopback by default,
            because Prometheus, Alertmanager, Elasticsearch, Kibana and Jaeger have no login here.
        scrape_interval: Prometheus scrape and rule-evaluation interval (the seed's ``15s``).
        runbook_base_url: prefix of every alert's ``runbook_url`` (the rule generator's default when ``None``).
        apdex_target: the dashboards' Apdex T in seconds (see :func:`bakhmach_obs.dashboards.generate`).
        environment: the ``deployment_environment`` label put on every scraped target (the
            dashboards' ``environment`` variable filters on it).
    """

    targets: tuple[str, ...] = (DEFAULT_TARGET,)
    job: str = "backend"
    metrics_path: str = "/metrics"
    slo_file: Path | None = None
    webhook_url: str = DEFAULT_WEBHOOK_URL
    page_webhook_url: str | None = None
    publish_address: str = "127.0.0.1"
    scrape_interval: str = "15s"
    runbook_base_url: str | None = None
    apdex_target: float = 0.25
    environment: str = "production"

    def __post_init__(self) -> None:
        if isinstance(self.targets, str) or not self.targets:
            raise ConfigurationError("targets", self.targets, "a non-empty sequence of host:port strings")
        object.__setattr__(self, "targets", tuple(self.targets))
        for target in self.targets:
            match = _HOST_PORT.match(target)
            if match is None or not 0 < int(match["port"]) < 65536:
                raise ConfigurationError("target", target, f"host:port, e.g. {DEFAULT_TARGET!r}")
        if not _JOB.match(self.job):
            raise ConfigurationError("job", self.job, "a Prometheus job name: letters, digits, '_' and '-'")
        if not self.metrics_path.startswith("/") or any(c.isspace() for c in self.metrics_path):
            raise ConfigurationError("metrics_path", self.metrics_path, "an absolute URL path such as '/metrics'")
        if self.slo_file is not None:
            path = Path(self.slo_file)
            if not path.is_file():
                raise ConfigurationError("slo_file", str(self.slo_file), "the path of an existing SLO YAML file")
            object.__setattr__(self, "slo_file", path)
        for name in ("webhook_url", "page_webhook_url"):
            url = getattr(self, name)
            if url is None:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError(name, url, "an http:// or https:// URL")
        try:
            ipaddress.ip_address(self.publish_address)
        except ValueError:
            raise ConfigurationError(
                "publish_address", self.publish_address, "an IP address, '127.0.0.1' (default) or '0.0.0.0'"
            ) from None
        if not _LABEL_VALUE.fullmatch(self.environment):
            raise ConfigurationError("environment", self.environment, "1-63 characters of [A-Za-z0-9_.-]")
        from .slo import parse_duration

        try:
            parse_duration(self.scrape_interval)
        except ValueError:
            raise ConfigurationError(
                "scrape_interval", self.scrape_interval, "a Prometheus duration such as '15s'"
            ) from None


@dataclass(frozen=True)
class WriteResult:
    """What :func:`write` did: the files written and whether an existing ``.env`` was kept."""

    directory: Path
    written: tuple[Path, ...]
    env_file: Path
    env_kept: bool


# --- the individual files ---------------------------------------------------------------------


def _yaml(data: Any, header: str = "") -> str:
    from ._yaml import dump

    return header + dump(data)


def _comment(text: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in text.strip("\n").splitlines())


_GENERATED = "Generated by `bakhmach-obs stack`; re-running the command overwrites this file."


def _prometheus_config(options: StackOptions) -> dict[str, Any]:
    def job(name: str, targets: list[str], **extra: Any) -> dict[str, Any]:
        static = {"targets": targets, "labels": {LABEL_DEPLOYMENT_ENVIRONMENT: options.environment}}
        return {"job_name": name, **extra, "static_configs": [static]}

    return {
        "global": {"scrape_interval": options.scrape_interval, "evaluation_interval": options.scrape_interval},
        # Relative to this file: /etc/prometheus/rules in the container, ./rules for promtool.
        "rule_files": ["rules/*.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]},
        "scrape_configs": [
            job(options.job, list(options.targets), metrics_path=options.metrics_path),
            job("database", [f"postgres-exporter:{EXPORTER_PORTS['postgres_exporter']}"]),
            job("node", [f"node-exporter:{EXPORTER_PORTS['node_exporter']}"]),
            # Monitor the monitoring: the seed's 'bakhmach-services' job scraped localhost:9090,
            # which is Prometheus itself.
            job("prometheus", ["localhost:9090"]),
            job("alertmanager", ["alertmanager:9093"]),
            job("grafana", ["grafana:3000"]),
            job("jaeger", ["jaeger:14269"]),
        ],
    }


_PAGE = 'severity=~"page|critical"'
_TICKET = 'severity=~"ticket|warning"'


def _inhibit_rules() -> list[dict[str, Any]]:
    from . import rules

    fast = sorted({w.alert for w in rules.BURN_RATE_WINDOWS if w.severity == "critical"})
    slow = sorted({w.alert for w in rules.BURN_RATE_WINDOWS if w.severity == "warning"})

    def one_of(names: list[str]) -> str:
        return f'alertname=~"{"|".join(names)}"'

    return [
        # A fast burn pages; the slow-burn ticket for the same SLO says nothing more.
        {"source_matchers": [one_of(fast)], "target_matchers": [one_of(slow)], "equal": [LABEL_SLO, LABEL_SLO_SERVICE]},
        # While the page-level alert fires, a ticket-level alert of the same name and service is noise.
        {"source_matchers": [_PAGE], "target_matchers": [_TICKET], "equal": ["alertname", LABEL_SLO_SERVICE, "job"]},
        # A database that is down explains its saturated connection pools.
        {
            "source_matchers": ['alertname="DatabaseDown"'],
            "target_matchers": ['alertname="DatabaseConnectionsHigh"'],
            "equal": ["job"],
        },
    ]


def _alertmanager_config(options: StackOptions) -> dict[str, Any]:
    def receiver(name: str, url: str) -> dict[str, Any]:
        return {"name": name, "webhook_configs": [{"url": url, "send_resolved": True}]}

    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": "ticket",
            "group_by": ["alertname", "service", "slo"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "12h",
            "routes": [
                # Someone is woken up: short wait, repeated hourly until resolved.
                {"receiver": "page", "matchers": [_PAGE], "group_wait": "10s", "repeat_interval": "1h"},
                # Worked on in office hours: the default receiver, kept explicit for readability.
                {"receiver": "ticket", "matchers": [_TICKET]},
            ],
        },
        "inhibit_rules": _inhibit_rules(),
        "receivers": [
            receiver("page", options.page_webhook_url or options.webhook_url),
            receiver("ticket", options.webhook_url),
        ],
    }


def _grafana_datasources() -> dict[str, Any]:
    from .dashboards import prometheus_datasource_json_data

    # Grafana expands $VAR and ${VAR} from its environment in provisioning files; "$$" is a literal
    # "$", so the trace-to-logs query reaches Grafana as ${__trace.traceId}.
    logs_query = 'trace_id:"$${__trace.traceId}"'
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": "prometheus",
                "type": "prometheus",
                "access": "proxy",
                "url": "http://prometheus:9090",
                "isDefault": True,
                "editable": False,
                # Exemplars carry trace_id: a click on one opens the trace in Jaeger (uid "jaeger").
                "jsonData": {**prometheus_datasource_json_data("jaeger"), "timeInterval": "15s"},
            },
            {
                "name": "Jaeger",
                "uid": "jaeger",
                "type": "jaeger",
                "access": "proxy",
                "url": "http://jaeger:16686",
                "editable": False,
                "jsonData": {
                    "tracesToLogsV2": {
                        "datasourceUid": "elasticsearch",
                        "spanStartTimeShift": "-5m",
                        "spanEndTimeShift": "5m",
                        "filterByTraceID": False,
                        "filterBySpanID": False,
                        "customQuery": True,
                        "query": logs_query,
                    }
                },
            },
            {
                "name": "Elasticsearch",
                "uid": "elasticsearch",
                "type": "elasticsearch",
                "access": "proxy",
                "url": "http://elasticsearch:9200",
                "editable": False,
                "jsonData": {
                    "index": "bakhmach-*",
                    "timeField": "@timestamp",
                    "logMessageField": "message",
                    "logLevelField": "level",
                },
            },
        ],
    }


_DASHBOARDS_IN_CONTAINER = "/etc/grafana/dashboards"


def _grafana_dashboard_provider() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "bakhmach-obs",
                "orgId": 1,
                "folder": "bakhmach-obs",
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": _DASHBOARDS_IN_CONTAINER, "foldersFromFilesStructure": False},
            }
        ],
    }


def _healthcheck(test: list[str], start_period: str = "10s") -> dict[str, Any]:
    return {"test": test, "interval": "10s", "timeout": "5s", "retries": 12, "start_period": start_period}


def _compose(options: StackOptions) -> dict[str, Any]:
    bind = options.publish_address

    def port(number: int, protocol: str = "") -> str:
        return f"{bind}:{number}:{number}{protocol}"

    host_gateway = ["host.docker.internal:host-gateway"]
    services: dict[str, Any] = {
        "prometheus": {
            "image": IMAGES["prometheus"],
            "command": [
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                "--storage.tsdb.retention.time=15d",
                "--web.enable-lifecycle",
                "--enable-feature=exemplar-storage",
            ],
            "ports": [port(9090)],
            "volumes": ["./prometheus:/etc/prometheus:ro", "prometheus_data:/prometheus"],
            "extra_hosts": host_gateway,
            "depends_on": {"alertmanager": {"condition": "service_healthy"}},
            "healthcheck": _healthcheck(["CMD", "wget", "-q", "--spider", "http://localhost:9090/-/ready"]),
            "restart": "unless-stopped",
        },
        "alertmanager": {
            "image": IMAGES["alertmanager"],
            "command": [
                "--config.file=/etc/alertmanager/alertmanager.yml",
                "--storage.path=/alertmanager",
                # One instance: no gossip cluster to join.
                "--cluster.listen-address=",
            ],
            "ports": [port(9093)],
            "volumes": ["./alertmanager:/etc/alertmanager:ro", "alertmanager_data:/alertmanager"],
            "extra_hosts": host_gateway,
            "healthcheck": _healthcheck(["CMD", "wget", "-q", "--spider", "http://localhost:9093/-/ready"]),
            "restart": "unless-stopped",
        },
        "grafana": {
            "image": IMAGES["grafana"],
            "ports": [port(3000)],
            "environment": {
                "GF_SECURITY_ADMIN_USER": "${GF_SECURITY_ADMIN_USER:-admin}",
                # From .env (generated, mode 0600); compose refuses to start without it.
                "GF_SECURITY_ADMIN_PASSWORD": "${GF_SECURITY_ADMIN_PASSWORD:?set GF_SECURITY_ADMIN_PASSWORD in .env}",
                "GF_USERS_ALLOW_SIGN_UP": "false",
                "GF_AUTH_ANONYMOUS_ENABLED": "false",
            },
            "volumes": [
                "grafana_data:/var/lib/grafana",
                "./grafana/provisioning:/etc/grafana/provisioning:ro",
                f"./grafana/dashboards:{_DASHBOARDS_IN_CONTAINER}:ro",
            ],
            "depends_on": {
                "prometheus": {"condition": "service_healthy"},
                "jaeger": {"condition": "service_started"},
                "elasticsearch": {"condition": "service_healthy"},
            },
            # curl, not wget: the image installs curl (Alpine and Ubuntu variants alike).
            "healthcheck": _healthcheck(["CMD", "curl", "-fsS", "-o", "/dev/null", "http://localhost:3000/api/health"]),
            "restart": "unless-stopped",
        },
        "elasticsearch": {
            "image": IMAGES["elasticsearch"],
            "environment": {
                "discovery.type": "single-node",
                # A local, single-node development store: no TLS, no users. Never expose it
                # beyond loopback like this; see docs/stack.md for a secured setup.
                "xpack.security.enabled": "false",
                "ES_JAVA_OPTS": "-Xms1g -Xmx1g",
            },
            "ports": [port(9200)],
            "volumes": ["elasticsearch_data:/usr/share/elasticsearch/data"],
            "healthcheck": _healthcheck(
                ["CMD-SHELL", "curl -fs 'http://localhost:9200/_cluster/health?wait_for_status=yellow&timeout=5s'"],
                start_period="60s",
            ),
            "restart": "unless-stopped",
        },
        "kibana": {
            "image": IMAGES["kibana"],
            "environment": {"ELASTICSEARCH_HOSTS": "http://elasticsearch:9200"},
            "ports": [port(5601)],
            "depends_on": {"elasticsearch": {"condition": "service_healthy"}},
            "healthcheck": _healthcheck(
                ["CMD-SHELL", "curl -fs http://localhost:5601/api/status >/dev/null"], start_period="60s"
            ),
            "restart": "unless-stopped",
        },
        "logstash": {
            "image": IMAGES["logstash"],
            "environment": {"XPACK_MONITORING_ENABLED": "false", "LS_JAVA_OPTS": "-Xms512m -Xmx512m"},
            # bakhmach_obs.logstash.LogstashHandler connects here (BAKHMACH_OBS_LOGSTASH_ADDRESS).
            "ports": [port(5000)],
            "volumes": ["./logstash/pipeline:/usr/share/logstash/pipeline:ro"],
            "depends_on": {"elasticsearch": {"condition": "service_healthy"}},
            "healthcheck": _healthcheck(["CMD-SHELL", "curl -fs http://localhost:9600/ >/dev/null"], "60s"),
            "restart": "unless-stopped",
        },
        "jaeger": {
            "image": IMAGES["jaeger"],
            "environment": {
                # OTLP in: gRPC 4317, HTTP 4318 (OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318).
                "COLLECTOR_OTLP_ENABLED": "true",
                # In-memory storage, bounded: the oldest traces go first.
                "MEMORY_MAX_TRACES": "100000",
            },
            "ports": [port(16686), port(4317), port(4318)],
            "restart": "unless-stopped",
        },
        "node-exporter": {
            "image": IMAGES["node-exporter"],
            "command": ["--path.rootfs=/host"],
            "pid": "host",
            "volumes": ["/:/host:ro,rslave"],
            "restart": "unless-stopped",
        },
        "postgres-exporter": {
            "image": IMAGES["postgres-exporter"],
            # The connection string can hold a password: it lives in .env, like Grafana's.
            "environment": {"DATA_SOURCE_NAME": "${POSTGRES_EXPORTER_DSN:?set POSTGRES_EXPORTER_DSN in .env}"},
            "extra_hosts": host_gateway,
            "restart": "unless-stopped",
        },
    }
    return {
        "name": "bakhmach-obs",
        "services": services,
        "volumes": {name: {} for name in _VOLUMES},
    }


_VOLUMES = ("prometheus_data", "alertmanager_data", "grafana_data", "elasticsearch_data")
_DEFAULT_DSN = "postgresql://postgres@host.docker.internal:5432/postgres?sslmode=disable"


def _env_text(password: str) -> str:
    return (
        "# Secrets for docker compose (variable substitution). Generated by `bakhmach-obs stack`;\n"
        "# kept when the command runs again (--force replaces it). Do not commit this file.\n"
        "GF_SECURITY_ADMIN_USER=admin\n"
        f"GF_SECURITY_ADMIN_PASSWORD={password}\n"
        "# postgres_exporter's connection string (a monitoring role with pg_monitor is enough).\n"
        f"POSTGRES_EXPORTER_DSN={_DEFAULT_DSN}\n"
    )


_ENV_EXAMPLE = (
    "# Template of .env (the real one is generated with a random password and mode 0600).\n"
    "# Left empty on purpose: compose refuses to start until you set a password.\n"
    "GF_SECURITY_ADMIN_USER=admin\n"
    "GF_SECURITY_ADMIN_PASSWORD=\n"
    f"POSTGRES_EXPORTER_DSN={_DEFAULT_DSN}\n"
)


def _rules(options: StackOptions) -> dict[str, Any]:
    from . import rules
    from .slo import load_slos

    slos = load_slos(options.slo_file) if options.slo_file is not None else []
    if options.runbook_base_url is None:
        return rules.generate(slos)
    return rules.generate(slos, runbook_base_url=options.runbook_base_url)


def _dashboards(options: StackOptions) -> dict[str, dict[str, Any]]:
    from . import dashboards

    return dashboards.generate(apdex_target=options.apdex_target)


def _logstash_pipeline() -> str:
    from .logstash import pipeline_path

    return pipeline_path().read_text(encoding="utf-8")


def generate(options: StackOptions | None = None) -> dict[str, str]:
    """Every file of the stack except ``.env``, by POSIX path relative to the output directory.

    Example:
        >>> files = generate(StackOptions(targets=("backend:8080",)))
        >>> sorted(files)[:3]
        ['.env.example', '.gitignore', 'alertmanager/alertmanager.yml']
        >>> "GF_SECURITY_ADMIN_PASSWORD=" in "".join(files.values())  # only in .env.example, as a placeholder
        True
    """
    options = options or StackOptions()
    header = _comment(_GENERATED)
    files: dict[str, str] = {
        "docker-compose.yml": _yaml(
            _compose(options),
            header
            + _comment(
                "Start: docker compose up -d   (reads .env for the Grafana password and the postgres DSN)\n"
                "Ports are published on " + options.publish_address + " only; see docs/stack.md before changing that."
            ),
        ),
        ".env.example": _ENV_EXAMPLE,
        # The output directory is meant to be committed; its secrets are not.
        ".gitignore": f"/{ENV_FILE}\n",
        "prometheus/prometheus.yml": _yaml(_prometheus_config(options), header),
        RULES_FILE: _yaml(_rules(options), header),
        "alertmanager/alertmanager.yml": _yaml(
            _alertmanager_config(options),
            header + _comment("Replace the webhook URLs with your pager and ticket integrations."),
        ),
        "grafana/provisioning/datasources/datasources.yml": _yaml(_grafana_datasources(), header),
        "grafana/provisioning/dashboards/dashboards.yml": _yaml(_grafana_dashboard_provider(), header),
        "logstash/pipeline/logstash.conf": _logstash_pipeline(),
    }
    for name, model in sorted(_dashboards(options).items()):
        filename = name if name.endswith(".json") else f"{name}.json"
        files[f"grafana/dashboards/{filename}"] = json.dumps(model, indent=2, ensure_ascii=False) + "\n"
    return files


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(
    directory: str | os.PathLike[str], options: StackOptions | None = None, *, force: bool = False
) -> WriteResult:
    """Write the stack into ``directory`` (created if needed) and return what was written.

    Generated files are replaced. ``.env`` is created with a fresh random Grafana password
    (``secrets.token_urlsafe``) and mode 0600, and left untouched when it exists, unless
    ``force`` is true.

    Example:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> result = write(directory)
        >>> oct(result.env_file.stat().st_mode & 0o777), result.env_kept
        ('0o600', False)
        >>> write(directory).env_kept  # the password survives a re-run
        True
        >>> import shutil; shutil.rmtree(directory)
    """
    root = Path(directory)
    files = generate(options)  # everything is generated before anything is written
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for relative, text in files.items():
        path = root / relative
        _write_atomic(path, text)
        written.append(path)
    env = root / ENV_FILE
    kept = env.exists() and not force
    if not kept:
        _write_atomic(env, _env_text(secrets.token_urlsafe(24)), mode=0o600)
        written.append(env)
    return WriteResult(directory=root, written=tuple(written), env_file=env, env_kept=kept)


# --- command line (``bakhmach-obs stack``) ------------------------------------------------------


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``bakhmach-obs stack``."""
    parser.add_argument("-o", "--output", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument(
        "--target",
        action="append",
        metavar="HOST:PORT",
        help=f"the service's metrics endpoint as seen from Prometheus; repeatable (default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--job", help="Prometheus job name of the service (default: the SLO file's service, else 'backend')"
    )
    parser.add_argument("--metrics-path", default="/metrics", help="exposition path (default /metrics)")
    parser.add_argument("--slo", type=Path, metavar="FILE", help="SLO YAML file for the generated rules")
    parser.add_argument("--webhook-url", default=DEFAULT_WEBHOOK_URL, help="Alertmanager webhook receiver URL")
    parser.add_argument("--page-webhook-url", help="webhook URL for page-severity alerts (default: --webhook-url)")
    parser.add_argument(
        "--publish-address", default="127.0.0.1", help="host address the ports are published on (default 127.0.0.1)"
    )
    parser.add_argument("--scrape-interval", default="15s", help="scrape and evaluation interval (default 15s)")
    parser.add_argument("--runbook-base-url", help="prefix of the alerts' runbook_url (default: the rules' default)")
    parser.add_argument(
        "--apdex-target", type=float, default=0.25, metavar="SECONDS", help="the dashboards' Apdex T (default 0.25)"
    )
    parser.add_argument(
        "--environment", default="production", help="deployment_environment label of the targets (default production)"
    )
    parser.add_argument("--force", action="store_true", help="also replace an existing .env (new Grafana password)")


def _job_for(slo_file: Path | None, job: str | None) -> tuple[str, list[str]]:
    """The job name to scrape the service as, and warnings about SLOs that would not match it."""
    if slo_file is None:
        return job or "backend", []
    from .slo import load_slos

    by_job = [s for s in load_slos(slo_file) if s.selector is None]  # these select {job="<service>"}
    services = sorted({s.service for s in by_job})
    chosen = job or (services[0] if len(services) == 1 else "backend")
    warnings = [
        f"SLO {s.name!r} selects job={s.service!r}, but the service is scraped as job {chosen!r}"
        for s in by_job
        if s.service != chosen
    ]
    return chosen, warnings


def run_cli(args: argparse.Namespace) -> int:
    """Run ``bakhmach-obs stack``: 0 on success, 2 for invalid options, 1 when writing failed."""
    try:
        job, warnings = _job_for(args.slo, args.job)
        options = StackOptions(
            targets=tuple(args.target or (DEFAULT_TARGET,)),
            job=job,
            metrics_path=args.metrics_path,
            slo_file=args.slo,
            webhook_url=args.webhook_url,
            page_webhook_url=args.page_webhook_url,
            publish_address=args.publish_address,
            scrape_interval=args.scrape_interval,
            runbook_base_url=args.runbook_base_url,
            apdex_target=args.apdex_target,
            environment=args.environment,
        )
        result = write(args.output, options, force=args.force)
    except ConfigurationError as exc:
        print(f"bakhmach-obs stack: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bakhmach-obs stack: error: cannot write {args.output}: {exc}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"bakhmach-obs stack: warning: {warning}", file=sys.stderr)
    env_note = "kept the existing .env" if result.env_kept else "new .env with a random Grafana password (mode 0600)"
    print(f"wrote {len(result.written)} files to {result.directory} ({env_note})")
    print(f"start it:  cd {result.directory} && docker compose up -d")
    print(f"Grafana:   http://{options.publish_address}:3000  (admin, password in {result.env_file})")
    return 0
