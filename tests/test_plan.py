"""``lockgate plan``: the capacity calculator. Expected figures are worked out by hand here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lockgate import GateSettings
from lockgate._plan import Plan, make_plan, parse_duration, render
from lockgate.cli import main

ORIGINAL = ["--pool", "100", "--avg-latency", "50ms", "--p95-latency", "80ms",
            "--target-rps", "1500", "--sla", "100ms"]  # fmt: skip


def as_settings(plan: Plan) -> GateSettings:
    """The recommendation as real settings (validated by pydantic)."""
    return GateSettings(
        max_concurrent=plan.max_concurrent,
        queue_capacity=plan.queue_capacity,
        wait_timeout=plan.wait_timeout,
        reject_threshold=plan.reject_threshold,
    )


def test_original_plan_the_pool_binds() -> None:
    """The original production numbers: Little's law asks 1,500 x 0.05 = 75 in flight, x 1.2 =
    90 seats; the pool allows 100 x 0.8 = 80 -> 80, and the pool binds. 80 seats serve
    80 / 0.05 = 1,600 rps, 75 / 80 = 93.75 % busy. Budget 100 - 80 = 20 ms: 1,600 x 0.02 = 32
    waiters; reject at 80 + 32 = 112."""
    plan = make_plan(pool=100, avg_latency=0.05, p95_latency=0.08, target_rps=1500, sla=0.1)
    assert plan.pool_bound == 80
    assert plan.in_flight == pytest.approx(75)
    assert plan.little_bound == 90  # float noise would make ceil(90.00000000000001) = 91
    assert (plan.max_concurrent, plan.binding) == (80, "pool")
    assert plan.capacity_rps == pytest.approx(1600)
    assert plan.utilization == pytest.approx(0.9375)
    assert plan.wait_budget == pytest.approx(0.02)
    assert plan.settings() == {
        "max_concurrent": 80, "queue_capacity": 32, "wait_timeout": 0.02, "reject_threshold": 112,
    }  # fmt: skip
    assert plan.env() == {
        "BACKPRESSURE_MAX_CONCURRENT": "80",
        "BACKPRESSURE_QUEUE_CAPACITY": "32",
        "BACKPRESSURE_WAIT_TIMEOUT": "0.02",
        "BACKPRESSURE_REJECT_THRESHOLD": "112",
    }
    assert len(plan.warnings) == 2
    assert "94% of the seats are busy" in plan.warnings[0]
    assert "grow the pool to 113" in plan.warnings[0]  # ceil(90 / 0.8) = 113
    # critical holds 8 of the 80 seats idle (share 10 %, lendable 0): 72 / 0.05 s = 1,440
    assert plan.warnings[1].startswith(
        "with no critical traffic 72 seats serve only 1,440 rps, below the 1,500 rps target"
    )
    assert plan.working[-1] == (
        "the default lanes hold 8 of the 80 seats for the critical lane; the other lanes "
        "share 72: 72 / 0.05 s = 1,440 rps"
    )


def test_littles_law_binds_when_the_pool_has_room() -> None:
    """Pool 200 -> 160 allowed; 1,500 x 0.05 x 1.2 = 90 needed -> 90; 75/90 = 83 % busy (no
    warning). Budget 250 - 100 = 150 ms at 90 / 0.05 = 1,800 rps -> 270 waiters."""
    plan = make_plan(pool=200, avg_latency=0.05, p95_latency=0.1, target_rps=1500, sla=0.25)
    assert (plan.pool_bound, plan.little_bound) == (160, 90)
    assert (plan.max_concurrent, plan.binding) == (90, "littles_law")
    assert plan.queue_capacity == 270
    assert plan.wait_timeout == pytest.approx(0.15)
    assert plan.reject_threshold == 360
    assert plan.warnings == ()
    assert "Little's law binds" in render(plan)


def test_a_target_beyond_the_seats_asks_for_more_instances() -> None:
    """Pool 10 -> 8 seats -> 8 / 0.05 = 160 rps; 1,500 rps needs ceil(1500 / 160) = 10."""
    plan = make_plan(pool=10, avg_latency=0.05, p95_latency=0.08, target_rps=1500, sla=0.1)
    assert plan.max_concurrent == 8
    assert plan.warnings == (
        "8 seats serve only 160 rps, below the 1,500 rps target: run at least 10 instances "
        "(or make requests faster)",
    )


def test_tiny_pool_and_rate_still_give_valid_settings() -> None:
    """Pool 1 -> floor(0.8) = 0 -> at least one seat; a small budget -> at least one waiter."""
    plan = make_plan(pool=1, avg_latency=0.01, p95_latency=0.02, target_rps=1, sla=0.0201)
    assert plan.max_concurrent == 1
    assert plan.queue_capacity == 1
    assert plan.wait_timeout == 0.001
    as_settings(plan)


@pytest.mark.parametrize(
    ("pool", "rps", "latency"),
    [(100, 1500, 0.05), (37, 333, 0.123), (1000, 20000, 0.02), (3, 7, 0.9)],
)
def test_recommendations_are_valid_settings(pool: int, rps: float, latency: float) -> None:
    plan = make_plan(
        pool=pool, avg_latency=latency, p95_latency=2 * latency, target_rps=rps, sla=3 * latency
    )
    settings = as_settings(plan)
    expected = min(math.floor(pool * 0.8) or 1, math.ceil(round(rps * latency * 1.2, 9)))
    assert settings.max_concurrent == expected
    assert settings.effective_reject_threshold == settings.max_concurrent + settings.queue_capacity


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50ms", 0.05), ("0.05s", 0.05), ("0.05", 0.05), (".5", 0.5), (" 80 ms ", 0.08), ("2", 2.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-5ms", "5x", "1e3", "ms"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration such as 50ms or 0\.05s, got "):
        parse_duration(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool": 0}, r"^the pool size must be at least 1, got 0$"),
        ({"avg_latency": 0.0}, r"^the average latency must be positive, got 0$"),
        ({"p95_latency": -1.0}, r"^the p95 latency must be positive, got -1$"),
        ({"target_rps": math.inf}, r"^the target rate must be positive, got inf$"),
        ({"sla": math.nan}, r"^the SLA must be positive, got nan$"),
        (
            {"sla": 0.08},
            r"^the SLA \(80 ms\) must be above the p95 latency \(80 ms\): a request that queued "
            r"at all would miss it; make the service faster first$",
        ),
    ],
)
def test_invalid_inputs(kwargs: dict[str, float], message: str) -> None:
    args: dict[str, float] = {
        "pool": 100, "avg_latency": 0.05, "p95_latency": 0.08, "target_rps": 1500, "sla": 0.1,
    }  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        make_plan(**args)  # type: ignore[arg-type]


# -- the command -----------------------------------------------------------------------------


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *ORIGINAL]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    assert "max_concurrent          80  the DB pool binds" in lines
    assert "queue_capacity          32  drains within the 20 ms queue-wait budget" in lines
    assert "4. max_concurrent = min(80, 90) = 80: the DB pool binds" in lines
    assert "2. Little's law: L = lambda x W = 1,500 rps x 0.05 s = 75 requests in flight" in lines
    assert "BACKPRESSURE_MAX_CONCURRENT=80" in lines


def test_cli_env_is_a_dotenv_that_gate_settings_read(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["plan", *ORIGINAL, "--format", "env"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# lockgate plan: pool 100, average latency 50 ms")
    assert out[1:] == [
        "BACKPRESSURE_MAX_CONCURRENT=80",
        "BACKPRESSURE_QUEUE_CAPACITY=32",
        "BACKPRESSURE_WAIT_TIMEOUT=0.02",
        "BACKPRESSURE_REJECT_THRESHOLD=112",
    ]
    for line in out[1:]:
        name, value = line.split("=")
        monkeypatch.setenv(name, value)
    settings = GateSettings()
    assert (settings.max_concurrent, settings.queue_capacity) == (80, 32)
    assert (settings.wait_timeout, settings.reject_threshold) == (0.02, 112)


def test_cli_env_values_read_back_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    """The env format prints the same numbers as the JSON one (no 6-digit ``%g``)."""
    args = ["--pool", "100", "--avg-latency", "50ms", "--p95-latency", "80ms",
            "--target-rps", "1500", "--sla", "1234.5678s"]
    assert main(["plan", *args, "--format", "json"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert main(["plan", *args, "--format", "env"]) == 0
    env = dict(line.split("=") for line in capsys.readouterr().out.splitlines()[1:])
    assert float(env["BACKPRESSURE_WAIT_TIMEOUT"]) == settings["wait_timeout"]


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *ORIGINAL, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"] == {
        "max_concurrent": 80, "queue_capacity": 32, "wait_timeout": 0.02, "reject_threshold": 112,
    }  # fmt: skip
    assert data["binding"] == "pool"
    assert data["inputs"] == {
        "pool": 100, "avg_latency_s": 0.05, "p95_latency_s": 0.08, "target_rps": 1500.0,
        "sla_s": 0.1,
    }  # fmt: skip
    assert data["derived"]["little_bound"] == 90
    assert data["env"]["BACKPRESSURE_REJECT_THRESHOLD"] == "112"
    assert len(data["working"]) == 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--sla", "70ms"], "the SLA (70 ms) must be above the p95 latency (80 ms)"),
        (["--avg-latency", "fast"], "argument --avg-latency: expected a duration such as 50ms"),
        (["--pool", "0"], "the pool size must be at least 1, got 0"),
        (["--target-rps", "-3"], "the target rate must be positive, got -3"),
        (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["--target-rps", "1e308", "--avg-latency", "10s", "--p95-latency", "20s", "--sla", "30s"],
         "the inputs are too large"),
    ],
)
def test_cli_errors_exit_2_with_a_message(
    change: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = list(ORIGINAL)
    for flag, value in zip(change[::2], change[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lockgate plan: error: " in err
    assert message in err


def test_cli_missing_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plan", "--pool", "100"])
    assert "the following arguments are required: --avg-latency" in capsys.readouterr().err


def test_console_entry_point_runs() -> None:
    """``python -m lockgate.cli plan`` in a fresh process (the ``lockgate`` script's target)."""
    done = subprocess.run(
        [sys.executable, "-m", "lockgate.cli", "plan", *ORIGINAL, "--format", "env"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert "BACKPRESSURE_MAX_CONCURRENT=80" in done.stdout.splitlines()


def test_the_docs_worked_example_is_what_the_command_prints() -> None:
    """``docs/operations/metrics.md`` shows the output for the original production plan."""
    docs = (Path(__file__).resolve().parent.parent / "docs/operations/metrics.md").read_text()
    shown = docs.split("$ lockgate plan " + " ".join(ORIGINAL) + "\n", 1)[1].split("```", 1)[0]
    plan = make_plan(pool=100, avg_latency=0.05, p95_latency=0.08, target_rps=1500, sla=0.1)
    assert shown == render(plan) + "\n"
