"""GateSettings and LaneSettings: defaults, env names of the original plan, presets, errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lockgate import GateSettings, LaneSettings, Priority


def test_defaults_match_the_design() -> None:
    """The documented defaults (DESIGN §2-§3), so a change to them is a conscious one."""
    s = GateSettings()
    assert (s.max_concurrent, s.queue_capacity, s.wait_timeout) == (100, 1000, 3.0)
    assert s.effective_reject_threshold == s.max_concurrent + s.queue_capacity
    assert s.lanes[Priority.CRITICAL].lendable == 0.0
    assert s.lanes[Priority.LOW].borrow_limit == 2.0
    assert [lane.share for lane in s.lanes.ordered()] == [0.10, 0.40, 0.40, 0.10]


def test_original_env_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment of the original plan keeps its .env unchanged."""
    monkeypatch.setenv("BACKPRESSURE_MAX_CONCURRENT", "42")
    monkeypatch.setenv("BACKPRESSURE_QUEUE_CAPACITY", "7")
    monkeypatch.setenv("BACKPRESSURE_WAIT_TIMEOUT", "1.5")
    monkeypatch.setenv("BACKPRESSURE_REJECT_THRESHOLD", "45")
    s = GateSettings()
    assert (s.max_concurrent, s.queue_capacity, s.wait_timeout, s.reject_threshold) == (
        42, 7, 1.5, 45,
    )


@pytest.mark.parametrize(("value", "enabled"), [("false", False), ("0", False), ("true", True)])
def test_kill_switch(monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool) -> None:
    """ENABLE_BACKPRESSURE turns the gate off and on without a code change."""
    monkeypatch.setenv("ENABLE_BACKPRESSURE", value)
    assert GateSettings().enabled is enabled


def test_nested_lane_env_overrides_only_what_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """BACKPRESSURE_LANES__LOW__SHARE keeps low's other defaults (borrow_limit 2.0)."""
    monkeypatch.setenv("BACKPRESSURE_LANES__LOW__SHARE", "0.3")
    low = GateSettings().lanes.low
    assert (low.share, low.borrow_limit, low.lendable) == (0.3, 2.0, 1.0)


def test_partial_lane_dict_merges_with_lane_defaults() -> None:
    """Overriding one key of a lane keeps that lane's own defaults for the others."""
    s = GateSettings(lanes={"critical": {"share": 0.2}})  # type: ignore[arg-type]
    assert s.lanes.critical.share == 0.2
    assert s.lanes.critical.lendable == 0.0
    assert s.lanes.high.share == 0.40


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("development", (20, 100, 10.0, 120)),
        ("staging", (80, 500, 5.0, 580)),
        ("production", (100, 1000, 3.0, 1100)),
    ],
)
def test_presets_of_the_original_plan(name: str, expected: tuple[int, int, float, int]) -> None:
    """The three environments of the original capacity plan."""
    s = GateSettings.preset(name)  # type: ignore[arg-type]
    got = (s.max_concurrent, s.queue_capacity, s.wait_timeout, s.effective_reject_threshold)
    assert got == expected


def test_preset_overrides_and_unknown_name() -> None:
    """A preset takes overrides; an unknown preset is a clear error. The reject threshold
    follows overridden seats or queue (it is the default, seats + queue)."""
    assert GateSettings.preset("staging", max_concurrent=10).max_concurrent == 10
    assert GateSettings.preset("development", max_concurrent=200).effective_reject_threshold == 300
    assert GateSettings.preset("production", queue_capacity=0).effective_reject_threshold == 100
    with pytest.raises(ValueError, match=r"^unknown preset 'prod'; choose one of "):
        GateSettings.preset("prod")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"queue_capacity": -1}, "queue_capacity"),
        ({"wait_timeout": 0}, "wait_timeout"),
        ({"wait_timeout": float("nan")}, "wait_timeout"),
        ({"target_wait": -0.1}, "target_wait"),
        ({"reject_threshold": 0}, "reject_threshold"),
        ({"lanes": {"low": {"lendable": 1.5}}}, "lanes.low.lendable"),
        ({"lanes": {"high": {"borrow_limit": -1}}}, "lanes.high.borrow_limit"),
        ({"lanes": {"high": {"bogus": 1}}}, "lanes.high.bogus"),
        ({"max_concurent": 5}, "max_concurent"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    """Invalid settings raise ValidationError whose error location is the field."""
    with pytest.raises(ValidationError) as info:
        GateSettings(**kwargs)  # type: ignore[arg-type]
    locations = {".".join(str(p) for p in err["loc"]) for err in info.value.errors()}
    assert field in locations


def test_invalid_env_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value in the environment is reported, never clamped or ignored."""
    monkeypatch.setenv("BACKPRESSURE_MAX_CONCURRENT", "-3")
    with pytest.raises(ValidationError, match="max_concurrent"):
        GateSettings()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"max_concurrent": 10, "reject_threshold": 5},
            "reject_threshold must be >= max_concurrent",
        ),
        ({"bypass_paths": ["health"]}, "paths must start with '/'"),
        ({"status_path": "status"}, "paths must start with '/'"),
        (
            {"lanes": {n: {"share": 0} for n in ("critical", "high", "normal", "low")}},
            "shares must have a positive sum",
        ),
    ],
)
def test_cross_field_errors(kwargs: dict[str, object], message: str) -> None:
    """Checks across fields raise ValidationError with a message that says what is wrong."""
    with pytest.raises(ValidationError, match=message):
        GateSettings(**kwargs)  # type: ignore[arg-type]


def test_lane_settings_are_frozen() -> None:
    """Settings are values: changing one in place is an error, not a silent no-op."""
    lane = LaneSettings(share=1)
    with pytest.raises(ValidationError):
        lane.share = 2


@pytest.mark.parametrize("text", ["none", "NULL", "off", ""])
def test_optional_fields_are_unset_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """An env var can say "unset" for the fields whose ``None`` means something."""
    monkeypatch.setenv("BACKPRESSURE_TARGET_WAIT", text)
    monkeypatch.setenv("BACKPRESSURE_REJECT_THRESHOLD", text)
    monkeypatch.setenv("BACKPRESSURE_STATUS_PATH", text)
    settings = GateSettings()
    assert (settings.target_wait, settings.reject_threshold, settings.status_path) == (
        None, None, None
    )
    monkeypatch.setenv("BACKPRESSURE_TARGET_WAIT", "0.02")
    assert GateSettings().target_wait == 0.02


def test_lane_none_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lane's ``None`` (no borrow limit, no queue limit) can be set from the environment."""
    monkeypatch.setenv("BACKPRESSURE_LANES__LOW__BORROW_LIMIT", "none")
    monkeypatch.setenv("BACKPRESSURE_LANES__LOW__QUEUE_LIMIT", "")
    low = GateSettings().lanes.low
    assert (low.borrow_limit, low.queue_limit) == (None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/healthz", ("/healthz",)),
        ("/healthz, /ready/", ("/healthz", "/ready/")),
        ('["/healthz", "/metrics"]', ("/healthz", "/metrics")),
        ("", ()),
    ],
)
def test_lists_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: tuple[str, ...]
) -> None:
    """A list setting reads as comma-separated text or as a JSON list."""
    monkeypatch.setenv("BACKPRESSURE_BYPASS_PATHS", text)
    monkeypatch.setenv("BACKPRESSURE_TRUSTED_PROXIES", "10.0.0.0/8,::1")
    settings = GateSettings()
    assert settings.bypass_paths == expected
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("BACKPRESSURE_BYPASS_PATHS", "[/healthz"),
        ("BACKPRESSURE_TRUSTED_PROXIES", "10.0.0.0/8,not-a-network"),
        ("BACKPRESSURE_LANES", "low=0.3"),
        ("BACKPRESSURE_BYPASS_PATHS", "healthz"),
    ],
)
def test_malformed_env_lists_raise_a_validation_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    """Not pydantic-settings' SettingsError: the same ValidationError as any bad value."""
    monkeypatch.setenv(name, text)
    with pytest.raises(ValidationError) as info:
        GateSettings()
    field = name.removeprefix("BACKPRESSURE_").lower()
    assert field in {str(err["loc"][0]) for err in info.value.errors()}


def test_lanes_as_one_json_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``BACKPRESSURE_LANES`` takes a JSON object; lanes it leaves out keep their defaults."""
    monkeypatch.setenv("BACKPRESSURE_LANES", '{"low": {"share": 0.3}}')
    lanes = GateSettings().lanes
    assert (lanes.low.share, lanes.low.borrow_limit, lanes.critical.lendable) == (0.3, 2.0, 0.0)


def test_the_environment_resizes_a_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Precedence: overrides, then BACKPRESSURE_* variables, then the preset. A preset is
    named defaults, so `lockgate plan --format env` resizes a preset without a code change
    (and never half of it: the env's reject threshold with the preset's seats)."""
    monkeypatch.setenv("BACKPRESSURE_MAX_CONCURRENT", "24")
    monkeypatch.setenv("BACKPRESSURE_QUEUE_CAPACITY", "96")
    monkeypatch.setenv("BACKPRESSURE_REJECT_THRESHOLD", "120")
    s = GateSettings.preset("production")
    assert (s.max_concurrent, s.queue_capacity, s.wait_timeout, s.reject_threshold) == (
        24, 96, 3.0, 120
    )
    s = GateSettings.preset("production", max_concurrent=50)
    assert (s.max_concurrent, s.queue_capacity) == (50, 96)


def test_an_unknown_backpressure_variable_is_logged_with_the_likely_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo is not silently ignored; the variables that are settings raise no warning."""
    monkeypatch.setenv("BACKPRESSURE_MAX_CONCURENT", "5")
    monkeypatch.setenv("BACKPRESSURE_LANES__LOW__SHARE", "0.2")
    monkeypatch.setenv("ENABLE_BACKPRESSURE", "true")
    with caplog.at_level("WARNING", logger="lockgate"):
        assert GateSettings().max_concurrent == 100
    warned = [r.getMessage() for r in caplog.records if r.name == "lockgate"]
    assert warned == [
        "BACKPRESSURE_MAX_CONCURENT is not a lockgate setting and is ignored "
        "(did you mean BACKPRESSURE_MAX_CONCURRENT?)"
    ]
