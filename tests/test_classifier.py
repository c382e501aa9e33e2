"""RuleClassifier: path exact / prefix / regex, methods; client headers never raise priority."""

from __future__ import annotations

import re

import pytest

from lockgate import Classifier, Priority, Rule, RuleClassifier, load_classifier
from lockgate.testing import make_scope

RULES = RuleClassifier(
    [
        Rule(path="/api/v1/auth/login", priority=Priority.HIGH, methods=frozenset({"post"})),
        Rule(prefix="/api/v1/auth/", priority=Priority.HIGH),
        Rule(regex=r"/api/v1/(batch|bulk)(/|$)", priority=Priority.LOW),
        Rule(prefix="/admin", priority=Priority.CRITICAL, methods=frozenset({"GET"})),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "lane"),
    [
        ("POST", "/api/v1/auth/login", Priority.HIGH),
        ("GET", "/api/v1/auth/refresh", Priority.HIGH),
        ("POST", "/api/v1/batch", Priority.LOW),
        ("POST", "/api/v1/bulk/import", Priority.LOW),
        ("POST", "/api/v1/batches", Priority.NORMAL),
        ("GET", "/admin/users", Priority.CRITICAL),
        ("DELETE", "/admin/users", Priority.NORMAL),
        ("GET", "/api/v1/users/me", Priority.NORMAL),
    ],
)
def test_rules_first_match_wins(method: str, path: str, lane: Priority) -> None:
    """Exact, prefix, regex and method rules map requests to lanes; else the default."""
    assert RULES.classify(make_scope(path, method)) is lane


def test_client_headers_never_raise_priority() -> None:
    """A spoofed role or priority header from a client does not change the lane."""
    spoofed = [(b"x-user-role", b"admin"), (b"x-priority", b"critical"), (b"priority", b"u=0")]
    scope = make_scope("/api/v1/users/me", "GET", headers=spoofed)
    assert RULES.classify(scope) is Priority.NORMAL
    assert RuleClassifier().classify(scope) is Priority.NORMAL


def test_default_lane_is_configurable() -> None:
    """No rule matching → the configured default lane."""
    assert RuleClassifier(default=Priority.LOW).classify(make_scope("/x")) is Priority.LOW


def test_rule_validation() -> None:
    """Two matchers in one rule is a clear error; int priorities and regexes are normalised."""
    with pytest.raises(ValueError, match=r"^a Rule takes at most one of path, prefix and regex$"):
        Rule(path="/a", prefix="/b", priority=Priority.HIGH)
    rule = Rule(regex="/x", priority=1)  # type: ignore[arg-type]
    assert rule.priority is Priority.HIGH
    assert isinstance(rule.regex, re.Pattern)


def test_entry_point_plugin_loading() -> None:
    """Classifiers are found by name in the lockgate.classifiers entry-point group."""
    loaded = load_classifier("rules", default=Priority.HIGH)
    assert isinstance(loaded, Classifier)
    assert loaded.classify(make_scope("/anything")) is Priority.HIGH
    with pytest.raises(LookupError, match="no classifier named 'nope'"):
        load_classifier("nope")


def test_reassigning_rules_recompiles_the_matcher() -> None:
    classifier = RuleClassifier([Rule(prefix="/batch", priority=Priority.LOW)])
    scope = make_scope(path="/batch/7")
    assert classifier.classify(scope) is Priority.LOW
    classifier.rules = [Rule(prefix="/batch", priority=Priority.HIGH)]
    assert classifier.rules == (Rule(prefix="/batch", priority=Priority.HIGH),)
    assert classifier.classify(scope) is Priority.HIGH
    classifier.rules = ()
    assert classifier.classify(scope) is Priority.NORMAL


def test_a_single_method_given_as_a_string_is_one_method() -> None:
    """``methods="POST"`` means POST, not the letters P, O, S and T."""
    rule = Rule(Priority.HIGH, path="/login", methods="POST")  # type: ignore[arg-type]
    assert rule.methods == frozenset({"POST"})
    assert rule.matches("/login", "POST") and not rule.matches("/login", "GET")


def test_rules_and_default_changed_after_the_gate_was_built_take_effect() -> None:
    """The gate skips ``classify`` for a rule-less classifier; rules or a default assigned
    later must still be obeyed."""
    from lockgate import Gate
    from lockgate.testing import ok_app

    classifier = RuleClassifier()
    gate = Gate(ok_app, classifier=classifier)
    before = classifier.fixed
    classifier.default = Priority.LOW
    assert (before, classifier.fixed) == (Priority.NORMAL, Priority.LOW)
    classifier.rules = [Rule(Priority.HIGH, prefix="/login")]
    assert classifier.fixed is None
    assert gate.classifier.classify(make_scope("/login")) is Priority.HIGH
    assert gate.classifier.classify(make_scope("/other")) is Priority.LOW
