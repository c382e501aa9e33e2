"""The public API is a contract: users' code and an external harness import these names."""

from __future__ import annotations

import lockgate
import lockgate.backends
import lockgate.degrade
import lockgate.demo
import lockgate.limits
import lockgate.testing

PUBLIC = {
    "Classifier", "DeadlineUnreachable", "Gate", "GateSettings", "GateStats", "LaneSeats",
    "LaneSettings", "LaneStats", "LanesSettings", "LockgateError", "Permit", "Priority",
    "PriorityScheduler", "QueueFull", "QueueTimeout", "RejectReason", "Rejected", "Rule",
    "RuleClassifier", "SystemOverload", "TrustedSource", "is_trusted_client", "load_classifier",
}


def test_exported_members() -> None:
    """``lockgate.__all__`` is exactly the documented set, each defined and re-exported."""
    assert set(lockgate.__all__) == PUBLIC
    for name in lockgate.__all__:
        member = getattr(lockgate, name)
        assert member.__module__.startswith("lockgate."), name
        assert not name.startswith("_")


def test_design_contract_imports() -> None:
    """The imports DESIGN.md promises keep working."""
    from lockgate import (  # noqa: F401
        Gate,
        GateSettings,
        GateStats,
        LaneSettings,
        Permit,
        Priority,
        PriorityScheduler,
        Rule,
        RuleClassifier,
    )
    from lockgate.degrade import (  # noqa: F401
        CacheOnlyPolicy,
        CircuitBreakerPolicy,
        ReadOnlyPolicy,
    )
    from lockgate.limits import AIMDLimit, FixedLimit, Gradient2Limit  # noqa: F401


def test_submodule_exports() -> None:
    """Public submodules list what they offer, and all of it exists."""
    for module in (lockgate.limits, lockgate.testing, lockgate.degrade, lockgate.backends,
                   lockgate.demo):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
