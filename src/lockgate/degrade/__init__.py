"""Graceful degradation: policies that make the service cheaper before it fails.

Each policy is asked before admission (``before``: answer or pass) and told how the requests
it passed ended (``after``). Give them to ``Gate(..., policies=[...])`` in order; the first
answer wins. Plugins register under the entry-point group ``lockgate.policies`` and are
loaded by name with ``load_policy``.
"""

from ._base import Answer as Answer
from ._base import DegradationPolicy as DegradationPolicy
from ._base import RequestInfo as RequestInfo
from ._base import ResponseInfo as ResponseInfo
from ._base import load_policy as load_policy
from ._chain import PolicyChain as PolicyChain
from .breaker import CircuitBreakerPolicy as CircuitBreakerPolicy
from .cache_only import CacheOnlyPolicy as CacheOnlyPolicy
from .read_only import ReadOnlyPolicy as ReadOnlyPolicy

__all__ = [
    "Answer",
    "CacheOnlyPolicy",
    "CircuitBreakerPolicy",
    "DegradationPolicy",
    "PolicyChain",
    "ReadOnlyPolicy",
    "RequestInfo",
    "ResponseInfo",
    "load_policy",
]
