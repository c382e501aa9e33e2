"""Mixed traffic: the T2 mix of DESIGN §11 over all three lanes of the sample service.

20 % ``POST /api/v1/auth/login`` (high lane), 70 % ``GET /api/v1/users/me`` (normal),
10 % ``POST /api/v1/batch`` (low). Under overload the ``SHED`` rows show which lane gives way
first: batch, then users/me; login last. Size it like the login scenarios, e.g.
``locust -f benchmarks/locust/mixed.py --headless -u 200 -r 50 -t 60s --host ... --csv out/mixed``.
"""

from __future__ import annotations

from locust import between, task

from lockgate_locust import GateAwareUser

LOGIN_BODY = {"username": "alice@example.com", "password": "correct horse"}
BATCH_BODY = {"items": [{"id": i} for i in range(16)]}


class MixedUser(GateAwareUser):
    """One request of the T2 mix per task, 0.5-1.5 s apart."""

    think_time = between(0.5, 1.5)

    @task(2)
    def login(self) -> None:
        self.call("POST", "/api/v1/auth/login", json=LOGIN_BODY)

    @task(7)
    def me(self) -> None:
        self.call("GET", "/api/v1/users/me")

    @task(1)
    def batch(self) -> None:
        self.call("POST", "/api/v1/batch", json=BATCH_BODY)
