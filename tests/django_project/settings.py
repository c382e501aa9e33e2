"""Settings of the test project: async views only, no database, no templates."""

from __future__ import annotations

SECRET_KEY = "lockgate-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = __name__.rpartition(".")[0] + ".urls"
INSTALLED_APPS: list[str] = []
# A realistic, async-capable middleware that still hops to a worker thread per request.
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
