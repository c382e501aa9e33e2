"""normal, threshold and overload: the original plan's login load at three sizes.

Every user logs in (``POST /api/v1/auth/login``, the high lane) and thinks 0.5-1.5 s between
requests. The three scenarios differ only in the number of users and the spawn rate::

    normal     -u 70  -r 10 -t 5m
    threshold  -u 120 -r 20 -t 5m
    overload   -u 200 -r 50 -t 5m

e.g. ``locust -f benchmarks/locust/locustfile.py --headless -u 200 -r 50 -t 60s
--host http://127.0.0.1:8000 --csv out/overload``. The gate's 503s show as ``SHED`` rows.
"""

from __future__ import annotations

from locust import between, task

from lockgate_locust import GateAwareUser

LOGIN_BODY = {"username": "alice@example.com", "password": "correct horse"}


class LoginUser(GateAwareUser):
    """Logs in again and again, 0.5-1.5 s apart."""

    think_time = between(0.5, 1.5)

    @task
    def login(self) -> None:
        self.call("POST", "/api/v1/auth/login", json=LOGIN_BODY)
