from __future__ import annotations

import pytest

import bakhmach_obs
from bakhmach_obs import ConfigurationError
from bakhmach_obs.config import SETTINGS, Settings, load_settings


def test_defaults_follow_the_seed():
    s = load_settings({}, environ={})
    assert s == Settings()
    assert s.traces_sampler == "parentbased_traceidratio"
    assert s.traces_sampler_arg == 0.1
    assert s.traces_exporter == ()  # no endpoint: nothing is exported
    assert s.shutdown_timeout == 5.0
    assert s.cardinality_limit == 2000


def test_keyword_beats_environment_beats_default():
    env = {"OTEL_SERVICE_NAME": "from-env", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    s = load_settings({"service_name": "from-kwarg"}, environ=env)
    assert s.service_name == "from-kwarg"
    assert s.traces_sampler_arg == 0.5
    assert load_settings({}, environ={}).traces_sampler_arg == 0.1


def test_none_keyword_means_not_given():
    s = load_settings({"service_name": None}, environ={"OTEL_SERVICE_NAME": "env"})
    assert s.service_name == "env"


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({"OTEL_SERVICE_NAME": "svc"}, "service_name", "svc"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=res,service.version=1.2"}, "service_name", "res"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.version=1.2"}, "service_version", "1.2"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod"}, "environment", "prod"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=stage"}, "environment", "stage"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "team=pay%20ments"}, "resource_attributes", {"team": "pay ments"}),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, "traces_sampler", "always_on"),
        ({"OTEL_TRACES_SAMPLER": " ParentBased_Always_Off "}, "traces_sampler", "parentbased_always_off"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "traces_exporter", ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "traces_exporter", ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "none"}, "traces_exporter", ()),
        ({"OTEL_SDK_DISABLED": "true"}, "tracing_enabled", False),
        ({"OTEL_SDK_DISABLED": "false"}, "tracing_enabled", True),
        ({"BAKHMACH_OBS_TRACING_ENABLED": "off", "OTEL_SDK_DISABLED": "false"}, "tracing_enabled", False),
        ({"OTEL_BSP_SCHEDULE_DELAY": "250"}, "schedule_delay", 0.25),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "10"}, "max_queue_size", 10),
        ({"BAKHMACH_OBS_CARDINALITY_LIMIT": "7"}, "cardinality_limit", 7),
        ({"BAKHMACH_OBS_LOG_LEVEL": "warn"}, "log_level", "WARNING"),
        ({"BAKHMACH_OBS_DISABLED": "yes"}, "disabled", True),
    ],
)
def test_environment_variables(env, field, expected):
    assert getattr(load_settings({}, environ=env), field) == expected


def test_otlp_endpoints():
    generic = load_settings({}, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert generic.otlp_endpoint == "http://collector:4318/v1/traces"
    assert generic.traces_exporter == ("otlp",)  # an endpoint turns OTLP on
    specific = load_settings(
        {},
        environ={
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://jaeger:4318/custom/path",
        },
    )
    assert specific.otlp_endpoint == "https://jaeger:4318/custom/path"
    explicit = load_settings({"traces_exporter": "otlp"}, environ={})
    assert explicit.otlp_endpoint == "http://localhost:4318/v1/traces"
    off = load_settings({"traces_exporter": "none"}, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert off.traces_exporter == ()


@pytest.mark.parametrize(
    ("kwargs", "setting", "accepted_fragment"),
    [
        ({"traces_sampler_arg": 2}, "traces_sampler_arg", "from 0 to 1"),
        ({"traces_sampler_arg": "half"}, "traces_sampler_arg", "from 0 to 1"),
        ({"traces_sampler_arg": True}, "traces_sampler_arg", "from 0 to 1"),
        ({"traces_sampler": "sometimes"}, "traces_sampler", "parentbased_traceidratio"),
        ({"traces_exporter": "jaeger"}, "traces_exporter", "otlp, console"),
        ({"traces_exporter": "none,otlp"}, "traces_exporter", "otlp, console"),
        ({"service_name": ""}, "service_name", "non-empty"),
        ({"service_name": "   "}, "service_name", "non-empty"),
        ({"otlp_endpoint": "collector:4318"}, "otlp_endpoint", "http://"),
        ({"otlp_endpoint": "ftp://collector"}, "otlp_endpoint", "http://"),
        ({"otlp_endpoint": "http://"}, "otlp_endpoint", "http://"),
        ({"otlp_endpoint": "http://host:99999"}, "otlp_endpoint", "http://"),
        ({"cardinality_limit": 0}, "cardinality_limit", "positive integer"),
        ({"shutdown_timeout": -1}, "shutdown_timeout", "positive number"),
        ({"log_format": "xml"}, "log_format", "json, console, none"),
        ({"log_level": "LOUD"}, "log_level", "DEBUG"),
        ({"metrics_enabled": "maybe"}, "metrics_enabled", "true/false"),
        ({"resource_attributes": "novalue"}, "resource_attributes", "key=value"),
    ],
)
def test_invalid_values_fail_loudly_naming_setting_and_accepted(kwargs, setting, accepted_fragment):
    with pytest.raises(ConfigurationError) as info:
        bakhmach_obs.configure(**kwargs)
    assert info.value.setting == setting
    assert setting in str(info.value)
    assert accepted_fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_invalid_environment_names_the_variable():
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_SAMPLER_ARG"):
        load_settings({}, environ={"OTEL_TRACES_SAMPLER_ARG": "2"})
    with pytest.raises(ConfigurationError, match="OTEL_SDK_DISABLED"):
        load_settings({}, environ={"OTEL_SDK_DISABLED": "perhaps"})


def test_unknown_setting_is_rejected_with_the_known_ones():
    with pytest.raises(ConfigurationError, match="service_name") as info:
        bakhmach_obs.configure(servce_name="typo")
    assert info.value.setting == "servce_name"


def test_environment_is_used_by_configure(monkeypatch, registry):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "env-service")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    s = bakhmach_obs.configure(registry=registry, log_format="none")
    assert s.service_name == "env-service"
    assert bakhmach_obs.get_settings() is s
    assert (
        registry.get_sample_value(
            "bakhmach_obs_build_info",
            {
                "service_name": "env-service",
                "service_version": "unknown",
                "deployment_environment": "unknown",
                "sdk_version": bakhmach_obs.__version__,
            },
        )
        == 1.0
    )


def test_bad_environment_before_configure_does_not_break_instrumented_code(monkeypatch):
    from bakhmach_obs import _runtime

    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "7")
    _runtime.swap(None)  # as in a fresh process: the default runtime is built from the environment

    @bakhmach_obs.instrument
    def still_works():
        return 42

    assert still_works() == 42


def test_every_setting_is_documented():
    for spec in SETTINGS:
        assert spec.description and spec.accepted and spec.default, spec.name
