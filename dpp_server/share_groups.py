"""The master's share groups: sessions that consume one production (spec ``share``).

Owns :class:`ShareGroups`. Sessions that set ``share`` and shape the same rows (one
:func:`~dpp_server.cache.output_digest`: table, filters, features, sampling; batch size,
epochs, seed, shuffle and ranks may differ) form a group. Nothing of a session's delivery is
shared: each keeps its own streams, leases, acknowledgements, resume and exactly-once
accounting in the ledger. What the group adds is a choice of *which* pending split a worker
is leased (:meth:`ShareGroups.position`), the common cursor:

1. a split this worker was leased recently for another member, and that this session has
   not been leased yet: the worker keeps that split's transformed rows in its share window
   (:mod:`dpp_server.share`), so this lease costs no read and no transform. Oldest first
   (the first to leave the window). Any pending position of a non-deterministic stream
   qualifies, so members with different split orders (another seed) still follow one
   another; a deterministic stream only within its ``max_splits_in_flight`` window;
2. else the first pending split (within :data:`LOOK_AHEAD` of the first) that no other live
   worker was leased recently for the group: that split is the group's next new one, and
   the other workers serve what they produced;
3. else, when every split rule 2 looked at is being served by another live worker, the
   master tries the next stream (round-robin) instead of producing one of them a second
   time; when every stream defers, or otherwise, the master's usual choice (locality of
   the disk cache, then the first pending split).

So a worker is never left idle while a split is pending. A member that lags further behind
than the worker's share window finds its entry evicted there and produces the split itself
(a miss): never a lost or repeated row, only work done twice.

Each lease of a member also says how many other members are still expected to read the
split (``share_readers``: the members not yet leased it here, counting only members whose
trainer called within ``rank_timeout_s``), so the worker drops the entry after its last
reader; the count on each lease replaces the worker's, so a member re-reading the split in
a later epoch does not take another member's read. Memory: at
most :data:`RECENT_SPLITS` split ids per group.

Not thread-safe: the master calls it with its lock held.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Container

from dpp_server import state

__all__ = ["LOOK_AHEAD", "RECENT_SPLITS", "ShareGroups"]

#: Split ids a group remembers as recently leased (and their worker), oldest forgotten first.
#: More than any worker's share window holds: an entry the window lost costs a miss there.
RECENT_SPLITS = 512
#: How far past a stream's first pending split the group looks for one no other worker holds.
LOOK_AHEAD = 32


@dataclasses.dataclass
class _Recent:
    worker_id: str
    sessions: set[str]  # members leased this split on ``worker_id``


class ShareGroups:
    """Share groups by output digest, and the splits recently leased for each."""

    def __init__(self) -> None:
        self._digest_of: dict[str, str] = {}  # session id -> digest (sharing sessions only)
        self._members: dict[str, set[str]] = {}  # digest -> session ids
        self._recent: dict[str, collections.OrderedDict[str, _Recent]] = {}

    def join(self, session_id: str, digest: str) -> None:
        """Adds a session that set ``share`` (idempotent)."""
        self._digest_of[session_id] = digest
        self._members.setdefault(digest, set()).add(session_id)

    def leave(self, session_id: str) -> None:
        """Removes a session (expired); a group left empty is forgotten."""
        digest = self._digest_of.pop(session_id, None)
        if digest is None:
            return
        members = self._members.get(digest, set())
        members.discard(session_id)
        if not members:
            self._members.pop(digest, None)
            self._recent.pop(digest, None)

    def members(self, session_id: str) -> frozenset[str]:
        """The session's group (itself included); empty when it does not share."""
        digest = self._digest_of.get(session_id)
        return frozenset(self._members.get(digest, ())) if digest is not None else frozenset()

    def position(
        self,
        session: state.SessionState,
        stream: state.StreamProgress,
        worker_id: str,
        pos: int,
        limit: int | None,
        live_workers: Container[str],
    ) -> tuple[int | None, bool]:
        """The position in ``stream`` to lease to ``worker_id`` (rules 1 and 2 above), or None,
        and whether to defer to another stream (rule 3).

        Args:
            pos: the stream's first pending position.
            limit: positions at or past it may not be leased (a deterministic stream's
                window); None: any.
            live_workers: workers alive now (a dead one's splits count as held by nobody).
        """
        session_id = session.session_id
        digest = self._digest_of.get(session_id)
        if digest is None or len(self._members.get(digest, ())) < 2:
            return None, False
        recent = self._recent.get(digest)
        if not recent:
            return None, False
        end = len(stream.split_indices) if limit is None else min(limit, len(stream.split_indices))
        for split_id, entry in recent.items():
            if entry.worker_id != worker_id or session_id in entry.sessions:
                continue
            p = self._pending_position(session, stream, split_id)
            if p is not None and p < end:
                return p, False
        looked = False
        for p in range(pos, min(end, pos + LOOK_AHEAD)):
            index = stream.split_indices[p]
            if index in stream.done or index in stream.leased:
                continue
            looked = True
            held = recent.get(session.splits[index].split_id)
            if (
                held is None
                or held.worker_id not in live_workers
                or held.worker_id == worker_id
                or session_id in held.sessions
            ):
                return p, False
        return None, looked

    def leased(
        self, session_id: str, split_id: str, worker_id: str, active: Callable[[str], bool]
    ) -> int:
        """Records that a member's lease of ``split_id`` went to ``worker_id``; returns how many
        other members are still expected to read it there (the lease's ``share_readers``),
        counting only the members ``active`` says still read."""
        digest = self._digest_of.get(session_id)
        if digest is None:
            return 0
        members = {m for m in self._members.get(digest, ()) if m == session_id or active(m)}
        if len(members) < 2:
            return 0
        recent = self._recent.setdefault(digest, collections.OrderedDict())
        entry = recent.get(split_id)
        if entry is None or entry.worker_id != worker_id:
            # New here (or produced again on another worker): this lease produces it.
            recent.pop(split_id, None)
            entry = recent[split_id] = _Recent(worker_id, set())
        entry.sessions.add(session_id)
        readers = len(members - entry.sessions)
        if readers <= 0:
            del recent[split_id]
        while len(recent) > RECENT_SPLITS:
            recent.popitem(last=False)
        return readers

    @staticmethod
    def _pending_position(
        session: state.SessionState, stream: state.StreamProgress, split_id: str
    ) -> int | None:
        index = session.index_of.get(split_id)
        if index is None or index in stream.done or index in stream.leased:
            return None
        return stream.position_of.get(index)
