"""Per-session lanes: one turn of a session at a time, in this process or across gateways."""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

#: Gives a lane up; fires once the next holder may take it.
Release = Callable[[], Deferred[None]]


class ILaneLock(Interface):
    """Who runs a session's turn now: holders of one key take turns, first come first served."""

    def acquire(
        key: str, shared: bool = True, on_lost: Callable[[], object] | None = None
    ) -> Deferred[Release]:
        """
        Fires with the release once the caller holds ``key``'s lane; cancel it to stop
        waiting.  ``shared``: the session is kept, so it is held against other gateways too
        (a lane for a session nobody keeps may stay local).  ``on_lost`` is called if the
        lane is lost while held (a lease that could not be renewed).  Fails with
        ``StoreUnavailable`` when the lock's store cannot be reached.
        """


@implementer(ILaneLock)
@attrs.define
class LocalLanes:
    """Lanes in this process: a ``DeferredLock`` per key, dropped when nobody holds or waits."""

    _lanes: dict[str, DeferredLock] = attrs.Factory(dict)

    def __len__(self) -> int:
        return len(self._lanes)

    def acquire(
        self, key: str, shared: bool = True, on_lost: Callable[[], object] | None = None
    ) -> Deferred[Release]:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = DeferredLock()

        def taken(_: object) -> Release:
            released: list[bool] = []

            def release() -> Deferred[None]:
                if not released:
                    released.append(True)
                    lane.release()
                    self._drop(key, lane)
                return succeed(None)

            return release

        def gave_up(failure: Failure) -> Failure:
            self._drop(key, lane)
            return failure

        d: Deferred[object] = lane.acquire()  # type: ignore[assignment]
        return d.addCallbacks(taken, gave_up)

    def _drop(self, key: str, lane: DeferredLock) -> None:
        if not lane.locked and not lane.waiting and self._lanes.get(key) is lane:
            del self._lanes[key]
