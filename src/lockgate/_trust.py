"""Trust: which parts of a request lockgate may believe.

Priority is an asset, so a client must not be able to claim a role. ``TrustedSource`` reads a
request's role only from places a client cannot write, in this order:

1. ``scope["state"][state_key]`` — set by an upstream ASGI layer (an auth middleware writing
   ``request.state.lockgate_role = "admin"`` in Starlette lands here);
2. ``role_callback(scope)`` — your code, e.g. the claim of an already verified JWT;
3. the ``role_header`` (``X-User-Role``) — **only** when the connection comes from one of the
   ``trusted_proxies`` networks, i.e. a proxy that strips the client's own copy and sets it.

A header from anywhere else is ignored, as are malformed values: non-ASCII, longer than
``MAX_ROLE_LENGTH``, empty, or sent more than once. A callback that raises counts as "no role"
(logged once). Nothing here raises on request data.

``is_trusted_client(scope, networks)`` is the proxy check on its own, for any header that
should only be believed from a trusted hop (deadline headers, too). It checks
``scope["client"]`` as the server reports it: if the server rewrites the client address from
``X-Forwarded-For`` (uvicorn ``--proxy-headers``), it must itself trust only your proxies.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from ._types import Scope

__all__ = [
    "MAX_ROLE_LENGTH",
    "Network",
    "TrustedSource",
    "is_trusted_client",
    "normalise_role",
    "parse_networks",
]

logger = logging.getLogger("lockgate")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_ROLE_LENGTH = 64
_ROLE = re.compile(r"[!-~]+")  # visible ASCII, no spaces


def parse_networks(networks: Iterable[str | Network]) -> tuple[Network, ...]:
    """``ip_network`` of each item (``"10.0.0.0/8"``, ``"::1"``); a bad one raises
    ``ValueError``, host bits set included (``"10.0.0.1/8"`` is a typo until proven)."""
    return tuple(
        n if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network)
        else ipaddress.ip_network(n)
        for n in networks
    )


def is_trusted_client(scope: Scope, networks: Sequence[Network]) -> bool:
    """Does the connection come from one of ``networks``? A missing or malformed
    ``scope["client"]`` (a unix socket, a hostname, garbage) is untrusted. An IPv4-mapped
    IPv6 address (``::ffff:10.0.0.1``, dual-stack servers) is checked as IPv4 too."""
    if not networks:
        return False
    client = scope.get("client")
    if not isinstance(client, tuple | list) or not client or not isinstance(client[0], str):
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return any(address in net or (mapped is not None and mapped in net) for net in networks)


def normalise_role(value: object) -> str | None:
    """A role as lockgate compares it (stripped, lower-case), or ``None`` if not one."""
    if isinstance(value, bytes | bytearray):
        if len(value) > MAX_ROLE_LENGTH:
            return None
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or len(value) > MAX_ROLE_LENGTH:
        return None
    value = value.strip().lower()
    return value if _ROLE.fullmatch(value) else None


class TrustedSource:
    """Where a request's role may come from. See the module docstring."""

    __slots__ = ("_callback_failed", "role_callback", "role_header", "state_key",
                 "trusted_proxies")

    def __init__(
        self,
        *,
        trusted_proxies: Iterable[str | Network] = (),
        role_header: str | None = "x-user-role",
        state_key: str | None = "lockgate_role",
        role_callback: Callable[[Scope], str | None] | None = None,
    ) -> None:
        self.trusted_proxies = parse_networks(trusted_proxies)
        self.role_header = role_header.lower().encode("latin-1") if role_header else None
        self.state_key = state_key
        self.role_callback = role_callback
        self._callback_failed = False

    def role_of(self, scope: Scope) -> str | None:
        """The request's role from the first trusted source that has one, else ``None``."""
        if self.state_key is not None:
            state = scope.get("state")
            if isinstance(state, Mapping):
                role = normalise_role(state.get(self.state_key))
                if role is not None:
                    return role
        if self.role_callback is not None:
            role = self._from_callback(self.role_callback, scope)
            if role is not None:
                return role
        if self.role_header is not None and is_trusted_client(scope, self.trusted_proxies):
            return self._from_header(scope, self.role_header)
        return None

    def _from_callback(self, callback: Callable[[Scope], object], scope: Scope) -> str | None:
        try:
            return normalise_role(callback(scope))
        except Exception:
            if not self._callback_failed:
                self._callback_failed = True
                logger.exception("role callback %r failed; no role", callback)
            return None

    @staticmethod
    def _from_header(scope: Scope, name: bytes) -> str | None:
        """The header's value when it is sent exactly once and well-formed."""
        try:
            values = [value for key, value in scope.get("headers", ()) if key.lower() == name]
        except (TypeError, ValueError, AttributeError):
            return None
        return normalise_role(values[0]) if len(values) == 1 else None

    def __repr__(self) -> str:
        proxies = [str(n) for n in self.trusted_proxies]
        return (
            f"TrustedSource(trusted_proxies={proxies!r}, role_header={self.role_header!r},"
            f" state_key={self.state_key!r}, role_callback={self.role_callback!r})"
        )
