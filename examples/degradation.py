"""Degradation policies: cheaper answers before the service fails."""

from lockgate import Gate, GateSettings
from lockgate.degrade import CacheOnlyPolicy, CircuitBreakerPolicy, ReadOnlyPolicy, RequestInfo
from lockgate.testing import ok_app

inner = ok_app  # your ASGI app

app = Gate(
    inner,
    GateSettings(max_concurrent=20),
    policies=[
        # Asked in this order; the first answer wins.
        CircuitBreakerPolicy(failure_threshold=5, recovery_timeout=60),  # CIRCUIT_OPEN
        ReadOnlyPolicy(threshold=0.9),  # writes -> READ_ONLY from 90 % busy until below 80 %
        CacheOnlyPolicy(threshold=0.95, ttl=30),  # GETs from earlier 200s from 95 % busy
    ],
)

# One breaker per dependency instead of one for the whole app:
per_route = Gate(
    inner,
    GateSettings(max_concurrent=20),
    policies=CircuitBreakerPolicy.per_prefix(["/api/v1/payments", "/api/v1/search"]),
)


# Cache-only for authenticated GETs: only with a key that separates the users.
def per_user(request: RequestInfo) -> str | None:
    user = request.scope.get("state", {}).get("user_id")  # set by your auth middleware
    return f"user:{user}" if user else None  # None: never cached nor served


per_user_cache = CacheOnlyPolicy(threshold=0.95, key=per_user, key_covers_credentials=True)
