"""Classifiers: which lane a request belongs to.

A classifier is any object with ``classify(scope) -> Priority``: fast, synchronous, pure. The
default ``RuleClassifier`` matches the path (exact, prefix or regex), the method and a role;
the first matching rule wins, else the default lane. Roles come only from a ``TrustedSource``
(``scope["state"]``, your callback, or a header from a trusted proxy network): a client cannot
buy a better lane by sending a header. Plugins register under the entry-point group
``lockgate.classifiers`` and are loaded by name with ``load_classifier``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from ._lanes import Priority
from ._trust import TrustedSource, normalise_role
from ._types import Scope

__all__ = ["Classifier", "Rule", "RuleClassifier", "TrustedSource", "load_classifier"]

ENTRY_POINT_GROUP = "lockgate.classifiers"


@runtime_checkable
class Classifier(Protocol):
    """Maps an HTTP scope to a lane. Must not raise and must not block."""

    def classify(self, scope: Scope) -> Priority: ...


@dataclass(frozen=True, slots=True)
class Rule:
    """One match → one lane. Set one of ``path`` (exact), ``prefix`` or ``regex``, or none
    (matches every path); ``methods`` narrows it to those HTTP methods.

    ``prefix`` is a plain string prefix: ``"/batch"`` also matches ``"/batches"``; write
    ``"/batch/"`` or a regex when that matters.

    ``role`` narrows it to requests whose *trusted* role (see ``TrustedSource``) is that role,
    compared case-blind: ``Rule(role="admin", priority=Priority.HIGH)``.
    """

    priority: Priority
    path: str | None = None
    prefix: str | None = None
    regex: str | re.Pattern[str] | None = None
    methods: frozenset[str] | None = field(default=None)
    role: str | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.path, self.prefix, self.regex) if x is not None]
        if len(given) > 1:
            raise ValueError("a Rule takes at most one of path, prefix and regex")
        if not isinstance(self.priority, Priority):
            object.__setattr__(self, "priority", Priority(self.priority))
        if isinstance(self.regex, str):
            object.__setattr__(self, "regex", re.compile(self.regex))
        if isinstance(self.methods, str):  # methods="POST": one method, not four letters
            object.__setattr__(self, "methods", frozenset({self.methods.upper()}))
        elif self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        if self.role is not None:
            role = normalise_role(self.role)
            if role is None:
                raise ValueError(f"not a valid role: {self.role!r}")
            object.__setattr__(self, "role", role)

    def matches(self, path: str, method: str, role: str | None = None) -> bool:
        """Does a request for ``path`` with ``method`` and trusted ``role`` match?"""
        return self.matches_target(path, method) and (self.role is None or role == self.role)

    def matches_target(self, path: str, method: str) -> bool:
        """Path and method only (the role is checked apart, and only when needed)."""
        if self.methods is not None and method not in self.methods:
            return False
        if self.path is not None:
            return path == self.path
        if self.prefix is not None:
            return path.startswith(self.prefix)
        if isinstance(self.regex, re.Pattern):
            return self.regex.match(path) is not None
        return True


class RuleClassifier:
    """First matching ``Rule`` wins; no match → ``default`` (``Priority.NORMAL``).

    ``trust`` says where roles come from; the default ``TrustedSource()`` believes only
    ``scope["state"]["lockgate_role"]``. The role is looked up once per request, and only when
    a role rule's path and method match.
    """

    __slots__ = ("_default", "_rules", "_steps", "fixed", "trust")

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        default: Priority = Priority.NORMAL,
        *,
        trust: TrustedSource | None = None,
    ) -> None:
        self._default = Priority(default)
        self.rules = rules
        self.trust = trust if trust is not None else TrustedSource()

    fixed: Priority | None
    """The lane of every request while there are no rules (``None`` with rules): the gate
    reads it instead of calling ``classify``. Kept up to date by ``rules`` and ``default``."""

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in order. Assigning a new sequence recompiles the matcher."""
        return self._rules

    @rules.setter
    def rules(self, rules: Iterable[Rule]) -> None:
        self._rules = tuple(rules)
        self._steps = _compile(self._rules)
        self.fixed = None if self._rules else self._default

    @property
    def default(self) -> Priority:
        """The lane of a request no rule matches."""
        return self._default

    @default.setter
    def default(self, lane: Priority) -> None:
        self._default = Priority(lane)
        self.fixed = None if self._rules else self._default

    def classify(self, scope: Scope) -> Priority:
        path: str = scope.get("path", "")
        role: str | None = None
        looked_up = False
        for prefixes, rule in self._steps:
            if prefixes is not None:  # a run of plain prefix rules of one lane: one C call
                if path.startswith(prefixes):
                    return rule.priority
                continue
            if not rule.matches_target(path, scope.get("method", "GET")):
                continue
            if rule.role is None:
                return rule.priority
            if not looked_up:
                role, looked_up = self.trust.role_of(scope), True
            if role == rule.role:
                return rule.priority
        return self._default

    def __repr__(self) -> str:
        return (
            f"RuleClassifier({list(self.rules)!r}, default={self.default!r},"
            f" trust={self.trust!r})"
        )


def _compile(rules: tuple[Rule, ...]) -> tuple[tuple[tuple[str, ...] | None, Rule], ...]:
    """``classify``'s steps: each run of consecutive prefix rules of one lane with no method
    or role condition becomes one ``str.startswith(tuple)`` test (the same first-match
    answer, one C call instead of a Python call per rule); other rules stay as they are."""
    steps: list[tuple[tuple[str, ...] | None, Rule]] = []
    for rule in rules:
        prefix = rule.prefix
        if prefix is None or rule.methods is not None or rule.role is not None:
            steps.append((None, rule))
            continue
        last = steps[-1] if steps else None
        if last is not None and last[0] is not None and last[1].priority == rule.priority:
            steps[-1] = ((*last[0], prefix), last[1])
        else:
            steps.append(((prefix,), rule))
    return tuple(steps)


def load_classifier(name: str, **kwargs: Any) -> Classifier:
    """Instantiate the classifier registered as ``name`` in ``lockgate.classifiers``."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        available = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise LookupError(f"no classifier named {name!r} (available: {', '.join(available)})")
    factory = next(iter(found)).load()
    classifier = factory(**kwargs)
    if not isinstance(classifier, Classifier):
        raise TypeError(f"{name!r} did not produce a Classifier: {classifier!r}")
    return classifier
