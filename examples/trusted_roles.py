"""Trust: roles raise a lane only when they come from a source the client cannot forge."""

from collections.abc import Mapping
from typing import Any

from lockgate import Classifier, Gate, Priority, Rule, RuleClassifier, TrustedSource
from lockgate.testing import ok_app


def verified_role(scope: Mapping[str, Any]) -> str | None:
    """The role claim of a token your auth middleware already verified (never a raw header)."""
    claims = scope.get("state", {}).get("jwt_claims") or {}
    role = claims.get("role")
    return role if isinstance(role, str) else None


classifier = RuleClassifier(
    [
        Rule(role="admin", priority=Priority.HIGH),
        Rule(prefix="/api/v1/auth/login", methods=frozenset({"POST"}), priority=Priority.HIGH),
        Rule(regex=r"^/(batch|bulk)/", priority=Priority.LOW),
    ],
    trust=TrustedSource(
        state_key="lockgate_role",  # 1. scope["state"]["lockgate_role"], set by your auth layer
        role_callback=verified_role,  # 2. your function of the scope
        trusted_proxies=["10.0.0.0/8"],  # 3. X-User-Role, only from these networks
    ),
)


class TenantTierClassifier:
    """A classifier of your own: any object with ``classify(scope) -> Priority``. Fast, sync,
    pure -- and it reads only what a trusted layer wrote, never a client's header."""

    def classify(self, scope: Mapping[str, Any]) -> Priority:
        tier = scope.get("state", {}).get("tenant_tier")  # set by your auth middleware
        return Priority.HIGH if tier == "enterprise" else Priority.NORMAL


custom: Classifier = TenantTierClassifier()
app = Gate(ok_app, classifier=classifier)
tiered = Gate(ok_app, classifier=custom)
