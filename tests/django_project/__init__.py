"""A minimal Django project (no database, no migrations) served through ``lockgate.Gate``.

``tests/test_frameworks.py`` points ``DJANGO_SETTINGS_MODULE`` at ``settings`` here and hands
each test's ``Probe`` to ``views.use()`` before building the gated ASGI application.
"""
