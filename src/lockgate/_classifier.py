"""Classifiers: which lane a request belongs to.

A classifier is any object with ``classify(scope) -> Priority``: fast, synchronous, pure. The
default ``RuleClassifier`` matches the path (exact, prefix or regex) and the method; the first
matching rule wins, else the default lane. It never reads client headers: a client cannot buy a
better lane by sending one. Plugins register under the entry-point group
``lockgate.classifiers`` and are loaded by name with ``load_classifier``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from ._lanes import Priority
from ._types import Scope

__all__ = ["Classifier", "Rule", "RuleClassifier", "load_classifier"]

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
    """

    priority: Priority
    path: str | None = None
    prefix: str | None = None
    regex: str | re.Pattern[str] | None = None
    methods: frozenset[str] | None = field(default=None)

    def __post_init__(self) -> None:
        given = [x for x in (self.path, self.prefix, self.regex) if x is not None]
        if len(given) > 1:
            raise ValueError("a Rule takes at most one of path, prefix and regex")
        if not isinstance(self.priority, Priority):
            object.__setattr__(self, "priority", Priority(self.priority))
        if isinstance(self.regex, str):
            object.__setattr__(self, "regex", re.compile(self.regex))
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))

    def matches(self, path: str, method: str) -> bool:
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
    """First matching ``Rule`` wins; no match → ``default`` (``Priority.NORMAL``)."""

    __slots__ = ("default", "rules")

    def __init__(self, rules: Iterable[Rule] = (), default: Priority = Priority.NORMAL) -> None:
        self.rules = tuple(rules)
        self.default = Priority(default)

    def classify(self, scope: Scope) -> Priority:
        if not self.rules:
            return self.default
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        for rule in self.rules:
            if rule.matches(path, method):
                return rule.priority
        return self.default

    def __repr__(self) -> str:
        return f"RuleClassifier({list(self.rules)!r}, default={self.default!r})"


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
