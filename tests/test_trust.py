"""Trusted priority: a role raises the lane only from sources a client cannot write."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockgate import Priority, Rule, RuleClassifier, load_classifier
from lockgate._trust import TrustedSource, is_trusted_client, parse_networks
from lockgate._types import Scope
from lockgate.testing import make_scope

PROXIES = ["10.0.0.0/8", "2001:db8::/32"]
ADMIN = [(b"x-user-role", b"admin")]


def classifier(trust: TrustedSource | None = None) -> RuleClassifier:
    return RuleClassifier(
        [Rule(prefix="/admin/", role="admin", priority=Priority.CRITICAL),
         Rule(prefix="/batch", priority=Priority.LOW),
         Rule(role="admin", priority=Priority.HIGH),
         Rule(role="ops", priority=Priority.HIGH)],
        trust=trust if trust is not None else TrustedSource(trusted_proxies=PROXIES),
    )


def scope_from(client: Any, headers: list[tuple[bytes, bytes]] | None = None,
               path: str = "/api/x") -> Scope:
    scope = make_scope(path, headers=headers or [])
    scope["client"] = client
    return scope


def test_spoofed_role_header_from_untrusted_client_is_ignored() -> None:
    """Acceptance: X-User-Role: admin from an ordinary client lands in the default lane."""
    for client in (("203.0.113.7", 5000), ("127.0.0.1", 5000), ("11.0.0.1", 1)):
        assert classifier().classify(scope_from(client, ADMIN)) is Priority.NORMAL


def test_role_header_from_trusted_proxy_is_honoured() -> None:
    """Acceptance: the same header from a trusted proxy network raises the lane."""
    assert classifier().classify(scope_from(("10.1.2.3", 5000), ADMIN)) is Priority.HIGH
    admin_path = scope_from(("10.1.2.3", 5000), ADMIN, path="/admin/users")
    assert classifier().classify(admin_path) is Priority.CRITICAL


@pytest.mark.parametrize(
    ("host", "trusted"),
    [("2001:db8::5", True), ("2001:db8:ffff::1", True), ("2001:db9::1", False),
     ("::1", False), ("::ffff:10.9.9.9", True), ("::ffff:192.0.2.1", False),
     ("10.255.255.255", True), ("9.255.255.255", False)],
)
def test_ipv6_and_ipv4_mapped_clients(host: str, trusted: bool) -> None:
    expected = Priority.HIGH if trusted else Priority.NORMAL
    assert classifier().classify(scope_from((host, 443), ADMIN)) is expected


@pytest.mark.parametrize(
    "client",
    [None, (), ("not-an-ip", 1), (b"10.0.0.1", 1), (10, 1), "10.0.0.1", 12345,
     ("10.0.0.1/8", 1), ("/run/app.sock", None), ("", 0), ({}, 0)],
)
def test_missing_or_malformed_client_is_untrusted(client: Any) -> None:
    scope = scope_from(client, ADMIN)
    assert not is_trusted_client(scope, parse_networks(PROXIES))
    assert classifier().classify(scope) is Priority.NORMAL


def test_missing_client_key() -> None:
    scope = scope_from(None, ADMIN)
    del scope["client"]
    assert classifier().classify(scope) is Priority.NORMAL


def test_is_trusted_client() -> None:
    """The helper the gate reuses for deadline headers: no networks → never trusted."""
    networks = parse_networks(["192.0.2.0/24", ipaddress.ip_network("fe80::/10")])
    assert is_trusted_client(scope_from(("192.0.2.9", 1)), networks)
    assert is_trusted_client(scope_from(["192.0.2.9", 1]), networks)
    assert is_trusted_client(scope_from(("fe80::1%eth0", 1)), networks)
    assert not is_trusted_client(scope_from(("192.0.3.1", 1)), networks)
    assert not is_trusted_client(scope_from(("127.0.0.1", 1)), ())


def test_parse_networks_rejects_typos() -> None:
    with pytest.raises(ValueError, match="has host bits set"):
        parse_networks(["10.0.0.1/8"])
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        parse_networks(["localhost"])
    assert parse_networks(["10.0.0.1"]) == (ipaddress.ip_network("10.0.0.1/32"),)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-user-role", b"\xffadmin\xfe")],
        [(b"x-user-role", "ädmin".encode())],
        [(b"x-user-role", b"admin" + b"x" * 100_000)],
        [(b"x-user-role", b"a" * 65)],
        [(b"x-user-role", b"admin"), (b"x-user-role", b"admin")],
        [(b"x-user-role", b"user"), (b"X-User-Role", b"admin")],
        [(b"x-user-role", b"")],
        [(b"x-user-role", b"ad min")],
    ],
)
def test_malformed_role_headers_are_ignored(headers: list[tuple[bytes, bytes]]) -> None:
    """Non-UTF-8, non-ASCII, huge, duplicated, empty or spaced values: no role, no error."""
    assert classifier().classify(scope_from(("10.0.0.1", 1), headers)) is Priority.NORMAL


def test_role_header_is_normalised() -> None:
    headers = [(b"X-User-Role", b"  Admin ")]
    assert classifier().classify(scope_from(("10.0.0.1", 1), headers)) is Priority.HIGH


def test_custom_role_header() -> None:
    trust = TrustedSource(trusted_proxies=PROXIES, role_header="X-Auth-Role")
    assert classifier(trust).classify(scope_from(("10.0.0.1", 1), ADMIN)) is Priority.NORMAL
    headers = [(b"x-auth-role", b"ops")]
    assert classifier(trust).classify(scope_from(("10.0.0.1", 1), headers)) is Priority.HIGH


def test_state_key_set_by_upstream_layer() -> None:
    """scope["state"] is written by server-side code only: trusted from any client."""
    scope = scope_from(("203.0.113.7", 1))
    scope["state"]["lockgate_role"] = "admin"
    assert RuleClassifier([Rule(role="admin", priority=Priority.HIGH)]).classify(scope) \
        is Priority.HIGH
    custom = TrustedSource(state_key="auth.role")
    assert classifier(custom).classify(scope) is Priority.NORMAL
    scope["state"]["auth.role"] = "ops"
    assert classifier(custom).classify(scope) is Priority.HIGH
    assert classifier(TrustedSource(state_key=None)).classify(scope) is Priority.NORMAL


@pytest.mark.parametrize("state", [None, [], "admin", {"lockgate_role": 1},
                                   {"lockgate_role": ["admin"]}, {"lockgate_role": object()}])
def test_odd_state_values_are_no_role(state: Any) -> None:
    scope = scope_from(("203.0.113.7", 1))
    scope["state"] = state
    assert classifier().classify(scope) is Priority.NORMAL


def test_state_wins_over_header() -> None:
    scope = scope_from(("10.0.0.1", 1), ADMIN, path="/admin/x")
    scope["state"]["lockgate_role"] = "guest"
    assert classifier().classify(scope) is Priority.NORMAL


def test_role_callback() -> None:
    """A callback (e.g. a verified JWT claim) supplies the role; None means no role."""
    def role_of(scope: Scope) -> str | None:
        return "ops" if scope["path"].endswith("/ops") else None

    trust = TrustedSource(role_callback=role_of)
    assert classifier(trust).classify(scope_from(("203.0.113.7", 1), path="/x/ops")) \
        is Priority.HIGH
    assert classifier(trust).classify(scope_from(("203.0.113.7", 1), ADMIN)) \
        is Priority.NORMAL


def test_raising_callback_is_no_role_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def role_of(scope: Scope) -> str | None:
        raise KeyError("claims")

    trust = TrustedSource(trusted_proxies=PROXIES, role_callback=role_of)
    with caplog.at_level(logging.ERROR, logger="lockgate"):
        for _ in range(3):
            assert classifier(trust).classify(scope_from(("1.2.3.4", 1))) is Priority.NORMAL
        # the header source still works after a failing callback
        assert classifier(trust).classify(scope_from(("10.0.0.1", 1), ADMIN)) is Priority.HIGH
    assert len([r for r in caplog.records if "role callback" in r.message]) == 1


def test_role_is_looked_up_once_and_only_when_needed() -> None:
    """Path rules win without asking for the role; several role rules share one lookup."""
    calls: list[str] = []

    def role_of(scope: Scope) -> str | None:
        calls.append(scope["path"])
        return "nobody"

    trust = TrustedSource(role_callback=role_of)
    assert classifier(trust).classify(scope_from(None, path="/batch/1")) is Priority.LOW
    assert calls == []
    assert classifier(trust).classify(scope_from(None, path="/admin/x")) is Priority.NORMAL
    assert calls == ["/admin/x"]


def test_rule_role_validation_and_compatibility() -> None:
    """Roles are normalised; a role that could never match is an error; old call forms work."""
    assert Rule(role=" Admin", priority=Priority.HIGH).role == "admin"
    for bad in ("", "two words", "x" * 65):
        with pytest.raises(ValueError, match=r"^not a valid role: "):
            Rule(role=bad, priority=Priority.HIGH)
    rule = Rule(prefix="/a", priority=Priority.LOW)
    assert rule.matches("/a/b", "GET") and not rule.matches("/b", "GET")
    role_rule = Rule(prefix="/a", role="admin", priority=Priority.HIGH)
    assert not role_rule.matches("/a/b", "GET")
    assert role_rule.matches("/a/b", "GET", "admin")
    positional = RuleClassifier([rule], Priority.HIGH)
    assert positional.classify(make_scope("/zzz")) is Priority.HIGH


def test_load_classifier_passes_trust() -> None:
    loaded = load_classifier("rules", rules=[Rule(role="admin", priority=Priority.HIGH)],
                             trust=TrustedSource(trusted_proxies=["10.0.0.0/8"]))
    assert loaded.classify(scope_from(("10.0.0.1", 1), ADMIN)) is Priority.HIGH
    assert loaded.classify(scope_from(("10.0.0.1", 1))) is Priority.NORMAL


HEADER_NAMES = st.sampled_from([b"x-user-role", b"X-User-Role", b"x-priority", b"cookie"])
HEADERS = st.lists(st.tuples(st.one_of(HEADER_NAMES, st.binary(max_size=20)),
                             st.binary(max_size=300)), max_size=6)
CLIENTS = st.one_of(
    st.none(),
    st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
    st.tuples(st.text(max_size=20), st.integers()),
    st.tuples(st.binary(max_size=8)),
)


@given(HEADERS, CLIENTS)
def test_arbitrary_headers_and_clients_never_raise(headers: Any, client: Any) -> None:
    """Whatever the headers and client, classify answers; from an untrusted client the
    lane is never raised by a header."""
    scope = scope_from(client, headers)
    lane = classifier().classify(scope)
    if not is_trusted_client(scope, parse_networks(PROXIES)):
        assert lane is Priority.NORMAL
    assert RuleClassifier().classify(scope) is Priority.NORMAL
