"""lockgate: admission control for ASGI services under overload.

``Gate(app, settings)`` admits a bounded number of requests at once, queues the overflow in
priority lanes with reserved shares, and answers the rest at once with a structured ``503``.
"""

from ._classifier import Classifier as Classifier
from ._classifier import Rule as Rule
from ._classifier import RuleClassifier as RuleClassifier
from ._classifier import load_classifier as load_classifier
from ._exceptions import DeadlineUnreachable as DeadlineUnreachable
from ._exceptions import LockgateError as LockgateError
from ._exceptions import QueueFull as QueueFull
from ._exceptions import QueueTimeout as QueueTimeout
from ._exceptions import Rejected as Rejected
from ._exceptions import RejectReason as RejectReason
from ._exceptions import SystemOverload as SystemOverload
from ._gate import Gate as Gate
from ._lanes import LaneSeats as LaneSeats
from ._lanes import Priority as Priority
from ._permit import Permit as Permit
from ._scheduler import PriorityScheduler as PriorityScheduler
from ._settings import GateSettings as GateSettings
from ._settings import LaneSettings as LaneSettings
from ._settings import LanesSettings as LanesSettings
from ._stats import GateStats as GateStats
from ._stats import LaneStats as LaneStats
from ._trust import TrustedSource as TrustedSource
from ._trust import is_trusted_client as is_trusted_client

__version__ = "0.1.0"

__all__ = [
    "Classifier",
    "DeadlineUnreachable",
    "Gate",
    "GateSettings",
    "GateStats",
    "LaneSeats",
    "LaneSettings",
    "LaneStats",
    "LanesSettings",
    "LockgateError",
    "Permit",
    "Priority",
    "PriorityScheduler",
    "QueueFull",
    "QueueTimeout",
    "RejectReason",
    "Rejected",
    "Rule",
    "RuleClassifier",
    "SystemOverload",
    "TrustedSource",
    "is_trusted_client",
    "load_classifier",
]
