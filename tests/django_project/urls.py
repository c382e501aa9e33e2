"""Routes of the test project (the same paths as the other frameworks' test apps)."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("hold/<str:name>", views.hold),
    path("fast", views.fast),
    path("health", views.health),
    path("echo", views.echo),
    path("login", views.login),
    path("boom", views.boom),
    path("stream", views.stream),
]
