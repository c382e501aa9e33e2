"""Settings: ``GateSettings`` (env prefix ``BACKPRESSURE_``) and per-lane ``LaneSettings``.

A deployment of the original capacity plan keeps its ``.env`` unchanged:
``BACKPRESSURE_MAX_CONCURRENT``, ``BACKPRESSURE_QUEUE_CAPACITY``, ``BACKPRESSURE_WAIT_TIMEOUT``,
``BACKPRESSURE_REJECT_THRESHOLD``, and ``ENABLE_BACKPRESSURE=false`` as a kill switch that
turns the gate into a pass-through. Lanes nest with ``__``:
``BACKPRESSURE_LANES__LOW__BORROW_LIMIT=1``; lists are comma-separated or JSON
(``BACKPRESSURE_BYPASS_PATHS=/health,/metrics``). Invalid values raise
``pydantic.ValidationError`` naming the field; nothing is clamped. A ``BACKPRESSURE_*``
variable that names no setting (a typo) is logged as a warning, with the likely meant name.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from ._lanes import Priority
from ._trust import parse_networks

__all__ = ["GateSettings", "LaneSettings", "LanesSettings"]

logger = logging.getLogger("lockgate")

ENV_PREFIX = "BACKPRESSURE_"

PresetName = Literal["development", "staging", "production"]

_PRESETS: dict[str, dict[str, float | int]] = {  # reject_threshold: the default, seats + queue
    "development": {"max_concurrent": 20, "queue_capacity": 100, "wait_timeout": 10.0},
    "staging": {"max_concurrent": 80, "queue_capacity": 500, "wait_timeout": 5.0},
    "production": {"max_concurrent": 100, "queue_capacity": 1000, "wait_timeout": 3.0},
}


class LaneSettings(BaseModel):
    """One lane's share of the seats and how it lends and borrows them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    share: float = Field(ge=0, allow_inf_nan=False)
    """Weight of the lane in the split of the limit (need not sum to 1)."""
    lendable: float = Field(default=1.0, ge=0, le=1)
    """Fraction of the lane's nominal seats other lanes may use while it does not."""
    borrow_limit: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """How far beyond its nominal seats the lane may grow, as a fraction; ``None``: up to C."""
    queue_limit: int | None = Field(default=None, ge=0)
    """Most waiters of this lane; ``None``: only the total ``queue_capacity`` applies."""

    @field_validator("borrow_limit", "queue_limit", mode="before")
    @classmethod
    def _none_from_text(cls, value: Any) -> Any:
        """``none``, ``null``, ``off`` or an empty string (how an env var says "unset")."""
        return _unset(value)


def _unset(value: Any) -> Any:
    """``None`` for ``none``, ``null``, ``off`` or an empty string, else ``value``."""
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null", "off"):
        return None
    return value


_LANE_DEFAULTS: dict[str, dict[str, Any]] = {
    "critical": {"share": 0.10, "lendable": 0.0},
    "high": {"share": 0.40},
    "normal": {"share": 0.40},
    "low": {"share": 0.10, "borrow_limit": 2.0},
}


class LanesSettings(BaseModel):
    """The four lanes. A partial dict overrides only the keys it names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    critical: LaneSettings = LaneSettings(**_LANE_DEFAULTS["critical"])
    high: LaneSettings = LaneSettings(**_LANE_DEFAULTS["high"])
    normal: LaneSettings = LaneSettings(**_LANE_DEFAULTS["normal"])
    low: LaneSettings = LaneSettings(**_LANE_DEFAULTS["low"])

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged: dict[str, Any] = {}
        for name, value in data.items():
            if isinstance(value, dict) and name in _LANE_DEFAULTS:
                value = {**_LANE_DEFAULTS[name], **value}
            merged[name] = value
        return merged

    @model_validator(mode="after")
    def _positive_total(self) -> Self:
        if sum(lane.share for lane in self.ordered()) <= 0:
            raise ValueError("the lanes' shares must have a positive sum")
        return self

    def ordered(self) -> tuple[LaneSettings, LaneSettings, LaneSettings, LaneSettings]:
        """The lanes in ``Priority`` order."""
        return (self.critical, self.high, self.normal, self.low)

    def __getitem__(self, lane: Priority) -> LaneSettings:
        return self.ordered()[lane]


class GateSettings(BaseSettings):
    """Everything the gate needs to know; read from ``BACKPRESSURE_*`` env vars too."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        validate_default=True,
    )

    enabled: bool = Field(
        default=True,
        validation_alias=AliasChoices("ENABLE_BACKPRESSURE", "BACKPRESSURE_ENABLED"),
    )
    """``False`` (``ENABLE_BACKPRESSURE=false``) makes the gate a pass-through."""
    max_concurrent: int = Field(default=100, ge=1)
    """Seats: requests run at once. Size it to the scarcest resource (DB pool x 0.8)."""
    queue_capacity: int = Field(default=1000, ge=0)
    """Waiters held at most, all lanes together; beyond it, ``QUEUE_FULL``."""
    wait_timeout: float = Field(default=3.0, gt=0, allow_inf_nan=False)
    """Longest wait in the queue, seconds; then ``QUEUE_TIMEOUT``."""
    reject_threshold: int | None = Field(default=None, ge=1)
    """Active + queued at which an arrival that must wait gets ``SYSTEM_OVERLOAD``.
    ``None``: ``max_concurrent + queue_capacity``."""
    lanes: Annotated[LanesSettings, NoDecode] = LanesSettings()
    target_wait: float | None = Field(default=0.05, gt=0, allow_inf_nan=False)
    """Standing-queue target, seconds; ``None`` turns queue management off."""
    deadline_headers: Literal["off", "trusted", "all"] = "off"
    """Honour a request's deadline (``X-Request-Timeout: <seconds>`` or ``grpc-timeout``):
    refuse at once with ``DEADLINE_UNREACHABLE`` when the predicted wait cannot meet it.
    ``"trusted"``: only from ``trusted_proxies``; ``"all"``: from anyone (``true``/``false``
    mean ``"all"``/``"off"``). Off by default: a deadline header is client input."""
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    """Networks (``"10.0.0.0/8"``, ``"::1"``) whose requests' headers lockgate may trust."""
    limit: str = Field(default="fixed", min_length=1)
    """``"fixed"``, ``"aimd"``, ``"gradient2"`` or a ``lockgate.limits`` entry-point name."""
    bypass_paths: Annotated[tuple[str, ...], NoDecode] = ("/health", "/metrics")
    """Paths never queued nor rejected; each also covers its sub-paths (``/health/ready``)."""
    status_path: str | None = "/metrics/backpressure"
    """Where the gate serves its JSON status; ``None`` to disable."""

    @field_validator("deadline_headers", mode="before")
    @classmethod
    def _deadline_mode(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "all" if value else "off"
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return "all"
        if isinstance(value, str) and value.lower() in ("false", "0", "no"):
            return "off"
        return value

    @field_validator("target_wait", "reject_threshold", "status_path", mode="before")
    @classmethod
    def _none_from_text(cls, value: Any) -> Any:
        """``none``, ``null``, ``off`` or an empty string (how an env var says "unset")."""
        return _unset(value)

    @field_validator("trusted_proxies", "bypass_paths", mode="before")
    @classmethod
    def _list_from_text(cls, value: Any) -> Any:
        """A JSON list, or comma-separated text (how an env var lists things)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)  # a JSONDecodeError is a ValueError: names the field
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @field_validator("lanes", mode="before")
    @classmethod
    def _lanes_from_text(cls, value: Any) -> Any:
        """``BACKPRESSURE_LANES`` as a JSON object (or set one value with ``__``)."""
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value)  # raises ValueError naming the bad one
        return value

    @field_validator("limit")
    @classmethod
    def _known_limit(cls, name: str) -> str:
        from .limits import BUILTIN_LIMITS, ENTRY_POINT_GROUP

        if name not in BUILTIN_LIMITS and not entry_points(group=ENTRY_POINT_GROUP, name=name):
            raise ValueError(f"unknown limit {name!r}; built in: {', '.join(BUILTIN_LIMITS)}")
        return name

    @field_validator("bypass_paths", "status_path")
    @classmethod
    def _absolute_paths(cls, value: Any) -> Any:
        for path in value if isinstance(value, tuple) else (value,) if value else ():
            if not path.startswith("/"):
                raise ValueError(f"paths must start with '/': {path!r}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.deadline_headers == "trusted" and not self.trusted_proxies:
            raise ValueError("deadline_headers='trusted' needs trusted_proxies")
        if self.reject_threshold is not None and self.reject_threshold < self.max_concurrent:
            raise ValueError("reject_threshold must be >= max_concurrent")
        return self

    @property
    def effective_reject_threshold(self) -> int:
        """``reject_threshold``, or ``max_concurrent + queue_capacity`` when unset."""
        if self.reject_threshold is None:
            return self.max_concurrent + self.queue_capacity
        return self.reject_threshold

    @classmethod
    def preset(cls, name: PresetName, **overrides: Any) -> GateSettings:
        """Named defaults for an environment, with optional overrides.

        ``development`` 20/100/10 s, ``staging`` 80/500/5 s, ``production`` 100/1000/3 s
        (seats / queue / wait); the reject threshold is the default, seats + queue (120, 580,
        1100), so it follows overridden seats or queue. Precedence, highest first:
        ``overrides``, then ``BACKPRESSURE_*`` variables, then the preset, then the defaults
        (a deployment's environment can resize a preset without a code change).
        """
        try:
            values = _PRESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown preset {name!r}; choose one of {', '.join(_PRESETS)}"
            ) from None
        from_env = EnvSettingsSource(cls)()
        kept = {field: value for field, value in values.items() if field not in from_env}
        return cls(**{**kept, **overrides})

    @model_validator(mode="after")
    def _warn_unknown_env(self) -> Self:
        """Log each ``BACKPRESSURE_*`` variable that names no setting: a typo would
        otherwise be ignored without a word."""
        known = _env_names(type(self))
        for name in os.environ:
            upper = name.upper()
            if upper.startswith(ENV_PREFIX) and upper not in known:
                close = difflib.get_close_matches(upper, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                logger.warning("%s is not a lockgate setting and is ignored%s", name, hint)
        return self


@functools.cache
def _env_names(settings: type[BaseSettings]) -> frozenset[str]:
    """Every environment variable a ``GateSettings`` reads, upper-case."""
    names = {"ENABLE_BACKPRESSURE", f"{ENV_PREFIX}ENABLED"}
    for field in settings.model_fields:
        names.add(f"{ENV_PREFIX}{field.upper()}")
    for lane in LanesSettings.model_fields:
        prefix = f"{ENV_PREFIX}LANES__{lane.upper()}"
        names.add(prefix)
        names.update(f"{prefix}__{key.upper()}" for key in LaneSettings.model_fields)
    return frozenset(names)
