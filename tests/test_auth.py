"""Auth: bearer parsing, constant-time compare, the failed-attempt limiter, the client IP."""

from __future__ import annotations

import hmac

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted import auth
from openclaw_twisted.auth import (
    MAX_TRACKED_ADDRESSES,
    Authenticator,
    ClientAddress,
    bearer,
    canonical_ip,
)
from openclaw_twisted.config import AuthConfig, RateLimitConfig

from .support import verdict


def limited(clock: Clock, **kw: object) -> Authenticator:
    limit = RateLimitConfig(**{"exempt_loopback": False, **kw})  # type: ignore[arg-type]
    return Authenticator(AuthConfig("token", token="right", rate_limit=limit), clock)


class CredentialTests(SynchronousTestCase):
    def test_bearer(self) -> None:
        self.assertEqual(bearer("Bearer abc"), "abc")
        self.assertEqual(bearer("  bearer   abc  "), "abc")
        self.assertEqual(bearer("BEARER abc"), "abc")
        self.assertIsNone(bearer("Basic abc"))
        self.assertIsNone(bearer("Bearer "))
        self.assertIsNone(bearer(None))
        self.assertIsNone(bearer(""))

    def test_token_and_password_modes(self) -> None:
        clock = Clock()
        token = Authenticator(AuthConfig("token", token="t0k"), clock)
        self.assertTrue(verdict(token, "t0k", "1.2.3.4").ok)
        self.assertEqual(verdict(token, "nope", "1.2.3.4").reason, "wrong")
        self.assertEqual(verdict(token, None, "1.2.3.4").reason, "missing")
        password = Authenticator(AuthConfig("password", token="t0k", password="pw"), clock)
        self.assertTrue(verdict(password, "pw", "1.2.3.4").ok)
        self.assertFalse(verdict(password, "t0k", "1.2.3.4").ok)
        self.assertTrue(verdict(Authenticator(AuthConfig("none"), clock), None, "1.2.3.4").ok)

    def test_compare_sees_only_fixed_size_digests(self) -> None:
        """The comparison never sees the secrets, so its time cannot depend on a shared prefix."""
        seen: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            seen.append((a, b))
            return real(a, b)

        self.patch(auth.hmac, "compare_digest", spy)
        a = Authenticator(AuthConfig("token", token="x" * 48), Clock())
        for given in ("x" * 47 + "y", "y" * 48, "x", "x" * 4096):
            self.assertFalse(verdict(a, given, "1.2.3.4").ok)
        self.assertEqual({(len(x), len(y)) for x, y in seen}, {(32, 32)})


class RateLimitTests(SynchronousTestCase):
    def test_locks_after_max_attempts_even_for_the_right_secret(self) -> None:
        clock = Clock()
        a = limited(clock, max_attempts=3, lockout_ms=10_000)
        for _ in range(3):
            self.assertEqual(verdict(a, "bad", "9.9.9.9").reason, "wrong")
        locked = verdict(a, "right", "9.9.9.9")
        self.assertEqual((locked.ok, locked.reason, locked.retry_after), (False, "locked", 10))
        clock.advance(9.2)
        self.assertEqual(verdict(a, "right", "9.9.9.9").retry_after, 1)  # ceil of 0.8 s
        clock.advance(1)
        self.assertTrue(verdict(a, "right", "9.9.9.9").ok)

    def test_other_addresses_are_unaffected(self) -> None:
        a = limited(Clock(), max_attempts=2)
        verdict(a, "bad", "9.9.9.9")
        verdict(a, "bad", "9.9.9.9")
        self.assertEqual(verdict(a, "right", "9.9.9.9").reason, "locked")
        self.assertTrue(verdict(a, "right", "8.8.8.8").ok)

    def test_missing_credential_is_not_a_failure(self) -> None:
        a = limited(Clock(), max_attempts=2)
        for _ in range(5):
            self.assertEqual(verdict(a, None, "9.9.9.9").reason, "missing")
        self.assertTrue(verdict(a, "right", "9.9.9.9").ok)

    def test_success_clears_the_record(self) -> None:
        a = limited(Clock(), max_attempts=3)
        verdict(a, "bad", "9.9.9.9")
        verdict(a, "bad", "9.9.9.9")
        self.assertTrue(verdict(a, "right", "9.9.9.9").ok)
        verdict(a, "bad", "9.9.9.9")
        verdict(a, "bad", "9.9.9.9")
        self.assertTrue(verdict(a, "right", "9.9.9.9").ok)

    def test_window_slides(self) -> None:
        clock = Clock()
        a = limited(clock, max_attempts=3, window_ms=1000)
        verdict(a, "bad", "9.9.9.9")
        verdict(a, "bad", "9.9.9.9")
        clock.advance(1.5)
        verdict(a, "bad", "9.9.9.9")
        self.assertTrue(verdict(a, "right", "9.9.9.9").ok)

    def test_loopback_exempt_by_default(self) -> None:
        a = Authenticator(AuthConfig("token", token="right", rate_limit=RateLimitConfig()), Clock())
        for _ in range(20):
            verdict(a, "bad", "127.0.0.1")
        self.assertTrue(verdict(a, "right", "127.0.0.1").ok)

    def test_ipv4_mapped_ipv6_is_the_ipv4_address(self) -> None:
        a = limited(Clock(), max_attempts=2)
        verdict(a, "bad", "::ffff:9.9.9.9")
        verdict(a, "bad", "9.9.9.9")
        self.assertEqual(verdict(a, "right", "::ffff:9.9.9.9").reason, "locked")
        self.assertEqual(canonical_ip("::ffff:10.0.0.1"), "10.0.0.1")

    def test_spray_keeps_memory_bounded_and_legit_client_unaffected(self) -> None:
        clock = Clock()
        a = limited(clock, max_attempts=2)
        assert a.limiter is not None
        for i in range(3 * MAX_TRACKED_ADDRESSES):
            verdict(a, "bad", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
            verdict(a, "bad", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
            clock.advance(0.001)
        self.assertLessEqual(len(a.limiter), 2 * MAX_TRACKED_ADDRESSES)
        self.assertTrue(verdict(a, "right", "192.0.2.7").ok)

    def test_expired_entries_are_pruned(self) -> None:
        clock = Clock()
        a = limited(clock, max_attempts=5, window_ms=1000)
        assert a.limiter is not None
        for i in range(100):
            verdict(a, "bad", f"10.0.0.{i}")
        clock.advance(2)
        verdict(a, "bad", "10.0.1.1")
        self.assertEqual(len(a.limiter), 1)


class ClientAddressTests(SynchronousTestCase):
    def test_untrusted_peer_is_the_client(self) -> None:
        c = ClientAddress.from_config(())
        self.assertEqual(c.resolve("203.0.113.5", "1.1.1.1"), "203.0.113.5")

    def test_rightmost_untrusted_hop_behind_trusted_proxies(self) -> None:
        c = ClientAddress.from_config(("10.0.0.0/8", "192.168.1.1"))
        self.assertEqual(c.resolve("10.0.0.2", "1.1.1.1, 2.2.2.2, 192.168.1.1"), "2.2.2.2")
        self.assertEqual(c.resolve("10.0.0.2", "10.1.1.1"), "10.0.0.2")
        self.assertEqual(c.resolve("10.0.0.2", None), "10.0.0.2")
        self.assertEqual(c.resolve("::ffff:10.0.0.2", "8.8.8.8"), "8.8.8.8")
