"""Who may talk to the gateway: credentials, the failed-attempt limiter, and the client's IP."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Literal

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from .config import AuthConfig, RateLimitConfig

#: The limiter forgets the oldest addresses past this many, so a spray cannot grow memory.
MAX_TRACKED_ADDRESSES = 10_000
#: What a locked-out client is told (HTTP 429, the WebSocket's RATE_LIMITED).
LOCKED_OUT = "Too many failed authentication attempts. Please try again later."


@attrs.frozen
class AuthResult:
    """The verdict: ``ok``, or why not (``missing``/``wrong`` → 401, ``locked`` → 429)."""

    ok: bool
    reason: Literal["missing", "wrong", "locked"] | None = None
    retry_after: int | None = None


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def secrets_match(given: str, expected: str) -> bool:
    """Constant-time comparison: hashing first hides the length as well as the content."""
    return hmac.compare_digest(_digest(given), _digest(expected))


def bearer(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <secret>`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def parse_ip(text: str) -> str | None:
    """
    The address in one X-Forwarded-For hop, canonical; ``None`` when it names no address.

    Ports and brackets go (``5.5.5.5:1234``, ``[::1]:80``), IPv4-mapped IPv6 is the IPv4
    address.  IPv4 with leading zeros (``05.5.5.5``) is refused: some parsers read it as octal.
    """
    hop = text.strip().strip('"')
    if hop.startswith("["):
        inside, bracket, rest = hop[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):
            return None
        hop = inside
    elif hop.count(":") == 1:  # IPv4 with a port; an IPv6 address has at least two colons
        hop, _, port = hop.partition(":")
        if not _is_port(port):
            return None
    try:
        addr = ipaddress.ip_address(hop)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535


def canonical_ip(ip: str) -> str:
    """IPv4-mapped IPv6 counts as the IPv4 address; anything unparsable is kept as it is."""
    return parse_ip(ip) or ip.strip()


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(canonical_ip(ip)).is_loopback
    except ValueError:
        return False


def forwarded_for(values: Sequence[bytes] | None) -> str | None:
    """All ``X-Forwarded-For`` headers of a request as one list (each proxy may add its own)."""
    if not values:
        return None
    return ",".join(v.decode("latin-1") for v in values)


@attrs.define
class ClientAddress:
    """Resolves the client IP: the socket peer, or the forwarded one behind a trusted proxy."""

    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_config(cls, trusted_proxies: tuple[str, ...]) -> ClientAddress:
        return cls(tuple(ipaddress.ip_network(p.strip(), strict=False) for p in trusted_proxies))

    def is_trusted(self, ip: str) -> bool:
        """Whether ``ip`` is one of ``gateway.trustedProxies``."""
        try:
            addr = ipaddress.ip_address(canonical_ip(ip))
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def resolve(self, peer: str, forwarded_for: str | None) -> str:
        """
        The right-most forwarded hop that is not a trusted proxy, behind a trusted peer.

        A hop that names no address ends the walk: the hops left of it are the client's own
        words, and a spelling we cannot read must never be a fresh address for the limiter.
        The client is then the proxy itself (which the limiter never exempts).
        """
        peer = canonical_ip(peer)
        if not self.trusted or not forwarded_for or not self.is_trusted(peer):
            return peer
        for raw in reversed(forwarded_for.split(",")):
            if not raw.strip():
                continue  # "a,,b" or a trailing comma: no hop there
            hop = parse_ip(raw)
            if hop is None:
                return peer
            if not self.is_trusted(hop):
                return hop
        return peer


class RateLimiter:
    """A sliding window of failures per IP; reaching the limit locks the IP out for a while."""

    def __init__(
        self,
        config: RateLimitConfig,
        clock: IReactorTime,
        proxy: Callable[[str], bool] = lambda ip: False,
    ) -> None:
        self.config = config
        self._clock = clock
        self._proxy = proxy
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures) + len(self._locked)

    def _exempt(self, ip: str) -> bool:
        # A trusted proxy is never exempt: what is counted against it is every client whose
        # forwarded address could not be read, and a proxy on loopback would exempt them all.
        return self.config.exempt_loopback and is_loopback(ip) and not self._proxy(ip)

    def retry_after(self, ip: str) -> int | None:
        """Seconds until ``ip`` may try again, or ``None`` when it is not locked."""
        until = self._locked.get(ip)
        if until is None:
            return None
        remaining = until - self._clock.seconds()
        if remaining <= 0:
            del self._locked[ip]
            return None
        return max(1, math.ceil(remaining))

    def failed(self, ip: str) -> None:
        if self._exempt(ip):
            return
        now = self._clock.seconds()
        window = self.config.window_ms / 1000
        attempts = self._failures.pop(ip, None) or deque()
        while attempts and attempts[0] <= now - window:
            attempts.popleft()
        attempts.append(now)
        if len(attempts) >= self.config.max_attempts:
            self._locked[ip] = now + self.config.lockout_ms / 1000
            self._locked.move_to_end(ip)
        else:
            self._failures[ip] = attempts  # re-inserted last: the dict stays oldest-first
        self._prune(now)

    def succeeded(self, ip: str) -> None:
        self._failures.pop(ip, None)

    def _prune(self, now: float) -> None:
        window = self.config.window_ms / 1000
        while self._failures:
            ip, attempts = next(iter(self._failures.items()))
            if attempts[-1] > now - window and len(self._failures) <= MAX_TRACKED_ADDRESSES:
                break
            del self._failures[ip]
        while self._locked:
            ip, until = next(iter(self._locked.items()))
            if until > now and len(self._locked) <= MAX_TRACKED_ADDRESSES:
                break
            del self._locked[ip]


class IAttemptStore(Interface):
    """Failed authentication attempts per client IP: what L{Authenticator} consults."""

    def retry_after(ip: str) -> Deferred[int | None]:
        """Seconds until ``ip`` may try again, or ``None`` when it is not locked out."""

    def failed(ip: str) -> Deferred[None]:
        """Count a failed attempt; reaching the limit locks ``ip`` out (from the next one)."""

    def succeeded(ip: str) -> Deferred[None]:
        """Forget ``ip``'s failed attempts (a lock stays until it runs out)."""


@implementer(IAttemptStore)
@attrs.define
class MemoryAttempts:
    """The in-memory L{RateLimiter} behind the same interface (one process only)."""

    limiter: RateLimiter

    def retry_after(self, ip: str) -> Deferred[int | None]:
        return succeed(self.limiter.retry_after(ip))

    def failed(self, ip: str) -> Deferred[None]:
        self.limiter.failed(ip)
        return succeed(None)

    def succeeded(self, ip: str) -> Deferred[None]:
        self.limiter.succeeded(ip)
        return succeed(None)


class Authenticator:
    """
    Checks a presented secret for HTTP and WebSocket alike (CONTRACT §3).  Failed attempts
    are counted in ``attempts``: this process's L{RateLimiter} by default, or a store every
    gateway shares (``cluster.RedisAttempts``), so an address locked out on one gateway is
    locked out on all.  With the in-memory store, ``check``'s Deferred has fired on return.
    """

    def __init__(
        self,
        config: AuthConfig,
        clock: IReactorTime,
        proxies: ClientAddress | None = None,
        attempts: IAttemptStore | None = None,
    ) -> None:
        self.config = config
        trusted = proxies.is_trusted if proxies is not None else (lambda ip: False)
        #: The in-process limiter, when the attempts are counted here (``None`` otherwise).
        self.limiter: RateLimiter | None = None
        if attempts is None and config.rate_limit:
            self.limiter = RateLimiter(config.rate_limit, clock, trusted)
            attempts = MemoryAttempts(self.limiter)
        self.attempts = attempts if config.rate_limit else None

    @property
    def required(self) -> bool:
        return self.config.mode != "none"

    def check(self, credential: str | None, ip: str) -> Deferred[AuthResult]:
        """
        The lock is checked before the secret; a missing secret is not a failed attempt.
        Fails (``StoreUnavailable``) when a shared attempt store cannot be reached: a lock
        that cannot be read is never taken for no lock.
        """
        if not self.required:
            return succeed(AuthResult(True))
        ip = canonical_ip(ip)
        attempts = self.attempts
        if attempts is None:
            return succeed(self._verify(credential, ip))
        return attempts.retry_after(ip).addCallback(self._locked_or, credential, ip, attempts)

    def _locked_or(
        self, wait: int | None, credential: str | None, ip: str, attempts: IAttemptStore
    ) -> AuthResult | Deferred[AuthResult]:
        if wait is not None:
            return AuthResult(False, "locked", wait)
        result = self._verify(credential, ip)
        if result.reason == "missing":
            return result
        # A wrong secret is answered 401 once it is counted; the lock it may set applies from
        # the next attempt.  A right one forgets the failures (and is not held up by that).
        if result.ok:
            attempts.succeeded(ip).addErrback(_ignore)
            return result
        return attempts.failed(ip).addCallback(lambda _: result)

    def _verify(self, credential: str | None, ip: str) -> AuthResult:
        if not credential:
            return AuthResult(False, "missing")
        expected = self.config.secret
        if expected is None or not secrets_match(credential, expected):
            return AuthResult(False, "wrong")
        return AuthResult(True)


def _ignore(failure: Failure) -> None:
    """Forgetting failures is best effort: they leave the window by themselves."""
