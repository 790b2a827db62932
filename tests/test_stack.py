"""`bakhmach-obs stack`: the generated files load in the real tools (promtool, Prometheus, amtool, Alertmanager)."""

from __future__ import annotations

import http.server
import json
import re
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter

from bakhmach_obs import dashboards, rules, stack
from bakhmach_obs.cli import main
from bakhmach_obs.errors import ConfigurationError
from bakhmach_obs.exposition import serve_metrics
from bakhmach_obs.logstash import pipeline_path
from bakhmach_obs.slo import load_slos, parse_slos
from tests.conftest import need_binary
from tests.prometheus_server import PrometheusServer, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent

SLO_FILE = """\
defaults: {service: checkout}
slos:
  - name: checkout-availability
    target: 99.9%
    sli: {kind: availability, source: http}
  - name: checkout-latency
    target: 99%
    sli: {kind: latency, threshold: 500ms}
"""
#: The services of the specification's compose file, and what the issue adds.
SEED_SERVICES = {"prometheus", "grafana", "elasticsearch", "kibana", "jaeger"}
ADDED_SERVICES = {"logstash", "alertmanager", "node-exporter", "postgres-exporter"}


@pytest.fixture
def slo_file(tmp_path):
    path = tmp_path / "slo.yaml"
    path.write_text(SLO_FILE, encoding="utf-8")
    return path


@pytest.fixture
def out(tmp_path, slo_file):
    """A stack written with an SLO file (the richest rule file)."""
    directory = tmp_path / "monitoring"
    stack.write(directory, stack.StackOptions(slo_file=slo_file, job="checkout"))
    return directory


def _load(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


# --- layout and content ---------------------------------------------------------------------------


def test_layout_contains_every_part_of_the_stack(out):
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    expected = {
        "docker-compose.yml",
        ".env",
        ".env.example",
        ".gitignore",
        "prometheus/prometheus.yml",
        stack.RULES_FILE,
        "alertmanager/alertmanager.yml",
        "grafana/provisioning/datasources/datasources.yml",
        "grafana/provisioning/dashboards/dashboards.yml",
        "logstash/pipeline/logstash.conf",
    } | {f"grafana/dashboards/{name}" for name in dashboards.generate()}
    assert files == expected


def test_rule_file_is_the_rule_generators_output_for_the_slo_file(out, slo_file):
    assert _load(out / stack.RULES_FILE) == rules.generate(load_slos(slo_file))
    groups = [g["name"] for g in _load(out / stack.RULES_FILE)["groups"]]
    assert "bakhmach_slo_checkout-availability" in groups
    assert "bakhmach_critical" in groups


def test_dashboards_are_the_dashboard_generators_output(out):
    for name, model in dashboards.generate().items():
        assert json.loads((out / "grafana" / "dashboards" / name).read_text(encoding="utf-8")) == model


def test_logstash_pipeline_is_the_sdks_and_its_port_is_published(out):
    conf = (out / "logstash/pipeline/logstash.conf").read_text(encoding="utf-8")
    assert conf == pipeline_path().read_text(encoding="utf-8")
    port = re.search(r"port\s*=>\s*(\d+)", conf)
    assert port is not None
    compose = _load(out / "docker-compose.yml")
    assert f"127.0.0.1:{port[1]}:{port[1]}" in compose["services"]["logstash"]["ports"]
    # The pipeline writes bakhmach-* indices: the Grafana Elasticsearch data source reads them.
    index = re.search(r'index\s*=>\s*"([^"%]+)', conf)
    datasources = _load(out / "grafana/provisioning/datasources/datasources.yml")["datasources"]
    es = next(d for d in datasources if d["uid"] == "elasticsearch")
    assert index is not None
    assert es["jsonData"]["index"] == index[1] + "*"


# --- Prometheus ------------------------------------------------------------------------------------


def test_promtool_check_config_passes_with_the_rule_files(out):
    promtool = need_binary("promtool")
    result = _run(promtool, "check", "config", str(out / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout
    assert "bakhmach-obs.rules.yml" in result.stdout
    # promtool resolves rule_files against the config file's directory, wherever it runs from.
    elsewhere = _run(promtool, "check", "config", "prometheus/prometheus.yml", cwd=out)
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr


def test_promtool_rejects_a_broken_rule_file(out):
    """The check above can fail: a broken rule file under the glob makes promtool exit non-zero."""
    promtool = need_binary("promtool")
    (out / "prometheus" / "rules" / "broken.yml").write_text(
        "groups:\n- name: x\n  rules:\n  - record: a\n    expr: 'sum('\n", encoding="utf-8"
    )
    result = _run(promtool, "check", "config", str(out / "prometheus" / "prometheus.yml"))
    assert result.returncode != 0


def test_prometheus_jobs_keep_the_specifications_names(out):
    config = _load(out / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["checkout"]["metrics_path"] == "/metrics"
    assert jobs["checkout"]["static_configs"][0]["targets"] == [stack.DEFAULT_TARGET]
    assert jobs["database"]["static_configs"][0]["targets"] == ["postgres-exporter:9187"]
    assert jobs["node"]["static_configs"][0]["targets"] == ["node-exporter:9100"]
    assert {"prometheus", "alertmanager", "grafana", "jaeger"} <= set(jobs)
    assert config["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s"}
    assert config["rule_files"] == ["rules/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_prometheus_runs_the_generated_config_scrapes_the_service_and_loads_the_rules(tmp_path, slo_file):
    registry = CollectorRegistry()
    Counter("stack_probe_total", "a probe series", registry=registry).inc()
    port = free_port()
    server = serve_metrics(port, registry=registry)
    directory = tmp_path / "monitoring"
    options = stack.StackOptions(
        targets=(f"127.0.0.1:{port}",), job="checkout", slo_file=slo_file, scrape_interval="1s"
    )
    stack.write(directory, options)
    try:
        config = directory / "prometheus" / "prometheus.yml"
        with PrometheusServer(tmp_path, config_file=config, extra_args=["--enable-feature=exemplar-storage"]) as prom:
            prom.wait_until(lambda: prom.query_values('up{job="checkout"}') == [1.0], timeout=30, what="service up")
            assert prom.query_values('stack_probe_total{job="checkout"}') == [1.0]
            jobs = {t["labels"]["job"] for t in prom.targets()}
            assert jobs == {"checkout", "database", "node", "prometheus", "alertmanager", "grafana", "jaeger"}
            loaded = {g["name"]: len(g["rules"]) for g in prom.wait_until(prom.rule_groups, what="rules")}
            generated = {g["name"]: len(g["rules"]) for g in rules.generate(load_slos(slo_file))["groups"]}
            assert loaded == generated
            # The SLO recording rules evaluate against the scraped job.
            prom.wait_until(
                lambda: prom.query('slo:objective:ratio{slo="checkout-availability", service="checkout"}'),
                what="SLO objective recorded",
            )
    finally:
        server.shutdown()
        server.server_close()


# --- Alertmanager -----------------------------------------------------------------------------------


def test_amtool_check_config_passes(out):
    amtool = need_binary("amtool")
    result = _run(amtool, "check-config", str(out / "alertmanager" / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "3 inhibit rules" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical"], "page"),
        (["severity=page"], "page"),
        (["severity=warning"], "ticket"),
        (["severity=ticket"], "ticket"),
        (["alertname=Unlabelled"], "ticket"),
    ],
)
def test_alerts_are_routed_by_severity(out, labels, receiver):
    amtool = need_binary("amtool")
    config = str(out / "alertmanager" / "alertmanager.yml")
    result = _run(amtool, "config", "routes", "test", f"--config.file={config}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_inhibition_rules_name_alerts_the_rule_generator_produces(out):
    names = set(rules.alert_names())
    config = _load(out / "alertmanager" / "alertmanager.yml")
    mentioned = set()
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            if m:
                mentioned.update(m[1].split("|"))
    assert mentioned
    assert mentioned <= names, mentioned - names
    generated = rules.generate(parse_slos(SLO_FILE))["groups"]
    severities = {r["labels"]["severity"] for g in generated for r in g["rules"] if "alert" in r}
    assert severities == {"critical", "warning"}  # both routed above


class _Webhook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict]]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _am_request(url: str, method: str = "GET", payload=None):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read()
    return json.loads(text) if text else None


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def test_alertmanager_runs_the_config_inhibits_and_delivers_pages(tmp_path):
    binary = need_binary("prometheus-alertmanager")
    hook_port = free_port()
    _Webhook.received = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", hook_port), _Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    directory = tmp_path / "monitoring"
    stack.write(
        directory,
        stack.StackOptions(
            webhook_url=f"http://127.0.0.1:{hook_port}/ticket", page_webhook_url=f"http://127.0.0.1:{hook_port}/page"
        ),
    )
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={directory / 'alertmanager' / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: urllib.request.urlopen(url + "/-/ready", timeout=2).status == 200, 20, "alertmanager ready")

        def alert(name, severity, **labels):
            return {"labels": {"alertname": name, "severity": severity, **labels}, "annotations": {"summary": name}}

        _am_request(
            url + "/api/v2/alerts",
            "POST",
            [
                alert("ErrorBudgetBurnFast", "critical", slo="checkout-availability", service="checkout"),
                alert("ErrorBudgetBurnSlow", "warning", slo="checkout-availability", service="checkout"),
                alert("ErrorBudgetBurnSlow", "warning", slo="checkout-latency", service="checkout"),
                alert("DatabaseDown", "critical", job="checkout"),
                alert("DatabaseConnectionsHigh", "warning", job="checkout", pool_name="main"),
                alert("DatabaseConnectionsHigh", "warning", job="billing", pool_name="main"),
            ],
        )

        def states():
            got = _am_request(url + "/api/v2/alerts")
            out = {
                (a["labels"]["alertname"], a["labels"].get("slo") or a["labels"].get("job")): a["status"]["state"]
                for a in got
            }
            return out if len(out) == 6 and "unprocessed" not in out.values() else None

        result = _wait(states, 15, "alerts processed")
        assert result == {
            ("ErrorBudgetBurnFast", "checkout-availability"): "active",
            ("ErrorBudgetBurnSlow", "checkout-availability"): "suppressed",  # inhibited by the fast burn
            ("ErrorBudgetBurnSlow", "checkout-latency"): "active",  # another SLO: not inhibited
            ("DatabaseDown", "checkout"): "active",
            ("DatabaseConnectionsHigh", "checkout"): "suppressed",  # its database is down
            ("DatabaseConnectionsHigh", "billing"): "active",
        }
        # Page-severity alerts reach the page receiver after its 10 s group_wait.
        pages = _wait(lambda: [b for p, b in _Webhook.received if p == "/page"], 30, "a page delivered")
        paged = {a["labels"]["alertname"] for body in pages for a in body["alerts"]}
        assert paged <= {"ErrorBudgetBurnFast", "DatabaseDown"}
        assert paged
        assert all(p != "/ticket" for p, _ in _Webhook.received)  # tickets wait 30 s
    finally:
        stop_process(proc)
        log.close()
        hook.shutdown()
        hook.server_close()


# --- docker compose --------------------------------------------------------------------------------

_PINNED = re.compile(r"^[a-z0-9./_-]+:v?\d+\.\d+\.\d+$")


def test_compose_names_every_service_and_pins_every_image(out):
    compose = _load(out / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == SEED_SERVICES | ADDED_SERVICES
    for name, service in services.items():
        image = service["image"]
        assert _PINNED.match(image), f"{name}: {image} is not pinned to a release"
        assert not image.endswith(":latest")
        assert image == stack.IMAGES[name]
    assert "version" not in compose  # obsolete in Compose v2


def test_compose_keeps_the_specifications_ports_on_loopback_and_enables_otlp(out):
    services = _load(out / "docker-compose.yml")["services"]
    published = {s: set(services[s].get("ports", [])) for s in services}
    for service, port in [
        ("prometheus", 9090),
        ("grafana", 3000),
        ("elasticsearch", 9200),
        ("kibana", 5601),
        ("jaeger", 16686),
        ("jaeger", 4317),
        ("jaeger", 4318),
        ("alertmanager", 9093),
        ("logstash", 5000),
    ]:
        assert f"127.0.0.1:{port}:{port}" in published[service]
    assert all(p.startswith("127.0.0.1:") for ports in published.values() for p in ports)
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert services["elasticsearch"]["environment"]["discovery.type"] == "single-node"
    assert services["kibana"]["environment"]["ELASTICSEARCH_HOSTS"] == "http://elasticsearch:9200"


def test_compose_references_resolve(out):
    compose = _load(out / "docker-compose.yml")
    services = compose["services"]
    volumes = set(compose["volumes"])
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (out / source).is_dir(), f"{name}: bind mount {source} does not exist"
            elif not source.startswith("/"):
                assert source in volumes, f"{name}: volume {source} is not declared"
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services
            assert spec["condition"] in ("service_started", "service_healthy")
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    # The dashboards provider reads the folder compose mounts.
    provider = _load(out / "grafana/provisioning/dashboards/dashboards.yml")["providers"][0]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in services["grafana"]["volumes"]


# What each image ships to run a healthcheck with. prom/* are built on quay.io/prometheus/busybox
# (busybox wget, no curl); Grafana's Dockerfile installs curl on Alpine and Ubuntu alike (busybox wget
# is not promised); the Elastic images install curl. A healthcheck calling anything else never passes,
# and every service that depends on it with service_healthy never starts.
_IMAGE_TOOLS = {
    "prometheus": {"wget"},
    "alertmanager": {"wget"},
    "grafana": {"curl"},
    "elasticsearch": {"curl"},
    "kibana": {"curl"},
    "logstash": {"curl"},
}


def test_healthchecks_only_call_tools_their_image_ships(out):
    services = _load(out / "docker-compose.yml")["services"]
    checked = {name for name, service in services.items() if "healthcheck" in service}
    assert checked <= set(_IMAGE_TOOLS), checked - set(_IMAGE_TOOLS)  # no healthcheck on an unknown image
    for name in checked:
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL")
        tool = test[1] if test[0] == "CMD" else test[1].split()[0]
        assert tool in _IMAGE_TOOLS[name], f"{name}: the healthcheck runs {tool!r}, the image has {_IMAGE_TOOLS[name]}"
        url = next(part for part in (test[1:] if test[0] == "CMD" else test[1].split()) if "localhost" in part)
        assert "localhost:" in url


def test_no_password_is_committed_in_compose(out):
    compose_text = (out / "docker-compose.yml").read_text(encoding="utf-8")
    env = dict(
        line.split("=", 1) for line in (out / ".env").read_text().splitlines() if line and not line.startswith("#")
    )
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert password not in compose_text
    grafana_env = _load(out / "docker-compose.yml")["services"]["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GF_SECURITY_ADMIN_PASSWORD:?")
    # Every ${VAR} compose substitutes is defined in .env and documented in .env.example.
    example = (out / ".env.example").read_text(encoding="utf-8")
    for var in set(re.findall(r"\$\{([A-Z_]+)", compose_text)):
        assert var in env, var
        assert f"{var}=" in example, var
    assert password not in example
    # the template has no usable password (compose's ${VAR:?} refuses an empty one) and git skips .env
    assert re.search(r"^GF_SECURITY_ADMIN_PASSWORD=$", example, re.M)
    assert (out / ".gitignore").read_text(encoding="utf-8").splitlines() == ["/.env"]


def test_env_file_is_private_random_and_kept_unless_forced(tmp_path):
    directory = tmp_path / "monitoring"
    first = stack.write(directory)
    env = directory / ".env"
    assert not first.env_kept
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    text = env.read_text()
    password = re.search(r"^GF_SECURITY_ADMIN_PASSWORD=(\S+)$", text, re.M)
    assert password is not None
    assert len(password[1]) >= 32
    (directory / "prometheus" / "prometheus.yml").write_text("edited")
    again = stack.write(directory)
    assert again.env_kept
    assert env.read_text() == text
    assert env not in again.written
    assert (directory / "prometheus" / "prometheus.yml").read_text() != "edited"  # generated files are replaced
    forced = stack.write(directory, force=True)
    assert not forced.env_kept
    assert env.read_text() != text
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    other = stack.write(tmp_path / "other")
    assert other.env_file.read_text() != env.read_text()  # a fresh password per stack


# --- Grafana ---------------------------------------------------------------------------------------


def test_grafana_datasources_link_exemplars_traces_and_logs(out):
    datasources = {d["uid"]: d for d in _load(out / "grafana/provisioning/datasources/datasources.yml")["datasources"]}
    assert set(datasources) == {"prometheus", "jaeger", "elasticsearch"}
    prometheus = datasources["prometheus"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["isDefault"] is True
    assert prometheus["jsonData"]["exemplarTraceIdDestinations"] == [{"name": "trace_id", "datasourceUid": "jaeger"}]
    assert dashboards.TRACE_DATASOURCE_UID == "jaeger"
    logs = datasources["jaeger"]["jsonData"]["tracesToLogsV2"]
    assert logs["datasourceUid"] == "elasticsearch"
    # Grafana expands $VAR in provisioning files: the literal ${__trace.traceId} must be written $${...}.
    assert logs["query"] == 'trace_id:"$${__trace.traceId}"'
    assert datasources["elasticsearch"]["jsonData"]["timeField"] == "@timestamp"
    for ds in datasources.values():
        host = re.match(r"http://([a-z-]+):\d+$", ds["url"])
        assert host is not None
        assert host[1] in stack.SERVICES


def test_every_dashboard_queries_a_provisioned_datasource(out):
    provisioned = {d["type"] for d in _load(out / "grafana/provisioning/datasources/datasources.yml")["datasources"]}
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                refs.append(node["datasource"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in (out / "grafana" / "dashboards").glob("*.json"):
        model = json.loads(path.read_text(encoding="utf-8"))
        variable = next(v for v in model["templating"]["list"] if v["name"] == "datasource")
        assert variable["query"] in provisioned
        walk(model)
    assert refs
    for ref in refs:
        assert ref["uid"] in ("${datasource}", "-- Grafana --"), ref
        assert ref["type"] in provisioned | {"grafana"}


# --- options and command line -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"targets": ("localhost",)}, "target"),
        ({"targets": ()}, "targets"),
        ({"targets": "localhost:8080"}, "targets"),
        ({"job": "bad job"}, "job"),
        ({"metrics_path": "metrics"}, "metrics_path"),
        ({"webhook_url": "ftp://x/"}, "webhook_url"),
        ({"page_webhook_url": "not a url"}, "page_webhook_url"),
        ({"publish_address": "everywhere"}, "publish_address"),
        ({"scrape_interval": "15 seconds"}, "scrape_interval"),
        ({"slo_file": Path("/nonexistent/slo.yaml")}, "slo_file"),
    ],
)
def test_bad_options_fail_loudly(kwargs, setting):
    with pytest.raises(ConfigurationError) as info:
        stack.StackOptions(**kwargs)
    assert info.value.setting == setting


def test_bad_apdex_target_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigurationError):
        stack.write(tmp_path / "monitoring", stack.StackOptions(apdex_target=0.3))
    assert not (tmp_path / "monitoring").exists()


def test_cli_writes_the_stack_and_scrapes_the_slo_files_service(tmp_path, slo_file, capsys):
    directory = tmp_path / "monitoring"
    targets = ["--target", "api:8000", "--target", "api2:8000"]
    assert main(["stack", "-o", str(directory), "--slo", str(slo_file), *targets]) == 0
    printed = capsys.readouterr()
    assert "docker compose up -d" in printed.out
    assert printed.err == ""
    jobs = {j["job_name"]: j for j in _load(directory / "prometheus" / "prometheus.yml")["scrape_configs"]}
    assert jobs["checkout"]["static_configs"][0]["targets"] == ["api:8000", "api2:8000"]  # the SLOs' service
    password = (directory / ".env").read_text()
    assert main(["stack", "-o", str(directory), "--slo", str(slo_file)]) == 0
    assert "kept the existing .env" in capsys.readouterr().out
    assert (directory / ".env").read_text() == password


def test_cli_warns_when_the_job_does_not_match_the_slo_service(tmp_path, slo_file, capsys):
    assert main(["stack", "-o", str(tmp_path / "m"), "--slo", str(slo_file), "--job", "backend"]) == 0
    err = capsys.readouterr().err
    assert "checkout-availability" in err
    assert "warning" in err


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    bad_slo = tmp_path / "bad.yaml"
    bad_slo.write_text("slos:\n  - {name: x, target: 2, service: s, sli: {kind: availability}}\n", encoding="utf-8")
    assert main(["stack", "-o", str(tmp_path / "m"), "--slo", str(bad_slo)]) == 2
    assert "target" in capsys.readouterr().err
    assert main(["stack", "-o", str(tmp_path / "m"), "--target", "nope"]) == 2
    assert "invalid target" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_docs_list_every_pinned_image():
    page = (ROOT / "docs" / "stack.md").read_text(encoding="utf-8")
    for service, image in stack.IMAGES.items():
        assert f"| {service} | `{image}` |" in page
