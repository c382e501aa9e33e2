"""Frozen snapshots of the gate's state, read by metrics, policies and the status endpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._lanes import Priority

__all__ = ["GateStats", "LaneStats"]

Status = Literal["healthy", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class LaneStats:
    """One lane at one instant."""

    lane: Priority
    active: int
    queued: int
    nominal: int
    guaranteed: int
    max: int
    admitted: int
    """Requests admitted since start (immediately or after waiting)."""
    rejected: Mapping[str, int] = field(default_factory=dict)
    """Rejections since start by reason code (``"QUEUE_FULL"``: 3)."""


@dataclass(frozen=True, slots=True)
class GateStats:
    """The whole gate at one instant. ``utilization`` is the share of the usable seats in use
    (0..1+): ``active / (limit - seats guaranteed to lanes that leave them idle)``."""

    limit: int
    active: int
    queued: int
    rejected: int
    admitted: int
    avg_wait_time_ms: float
    """Mean queue wait of admitted requests since start, immediate admissions counted as 0."""
    lanes: tuple[LaneStats, ...]

    @property
    def utilization(self) -> float:
        """Seats in use over the seats requests could use now. A lane's idle guaranteed seats
        (critical's, by default) are no one else's: counted in, they would cap it below 1 and
        the read-only / cache-only thresholds (0.9, 0.95) could never be reached."""
        reserved = sum(max(0, lane.guaranteed - lane.active) for lane in self.lanes)
        usable = self.limit - reserved
        return self.active / usable if usable > 0 else 1.0

    @property
    def status(self) -> Status:
        """``healthy`` below 70 % utilisation, ``warning`` below 90 %, else ``critical``."""
        if self.utilization >= 0.9:
            return "critical"
        if self.utilization >= 0.7:
            return "warning"
        return "healthy"

    def as_status_json(self) -> dict[str, Any]:
        """The body of the status endpoint (the original plan's format plus per-lane detail)."""
        return {
            "success": True,
            "data": {
                "current_requests": self.active,
                "queued_requests": self.queued,
                "rejected_requests": self.rejected,
                "avg_wait_time_ms": round(self.avg_wait_time_ms, 3),
                "utilization_percent": round(self.utilization * 100, 1),
                "status": self.status,
                "limit": self.limit,
                "lanes": {
                    lane.lane.label: {
                        "active": lane.active,
                        "queued": lane.queued,
                        "nominal": lane.nominal,
                        "guaranteed": lane.guaranteed,
                        "max": lane.max,
                        "admitted": lane.admitted,
                        "rejected": dict(lane.rejected),
                    }
                    for lane in self.lanes
                },
            },
        }
