"""One replica of one shard: the scheme gallery of the shard's subjects, inside a Ray actor.

Everything that crosses to and from a replica is plain data: subject names,
store ids, codes and ciphertext rows as bytes, capture-edge messages as their
bytes, encrypted-score requests as ``EncryptedScores.to_bytes()``, and the
plain ``Staged.change`` data that replays a write. No object of the native
core is ever pickled: each replica builds its own from bytes.

Reads (:data:`READS`) also come straight from the service over a TLS link of
their own (:mod:`fpmatch.cluster.wire`), in threads beside Ray's: a
reader-writer lock keeps them apart from writes.

A replica never talks to the key holder. When staging an enrolment wants
erased slots reclaimed, the replica returns the reclaim request instead; the
service asks its key holder and stages again with the reply (see
:class:`_ReclaimReplies`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from ..edge import EdgeProfile, EnrolmentRecord, ProbeMessage, check_message
from ..galleries import StoredTemplate, open_gallery
from ..errors import InvalidInputError
from ..he.errors import RateLimitExceededError
from ..service.locks import ReadWriteLock
from .wire import ReadServer, tls_context

#: What a replica's restore takes per subject: (subject, store id, code, slot, sealed part).
TemplateTuple = tuple[str, int, "bytes | None", "int | None", "bytes | None"]
#: The calls the service may make over a replica's own TLS link (everything else goes over Ray), and
#: the type of each argument.
READS: dict[str, tuple[type | tuple[type, ...], ...]] = {
    "ping": (),
    "nearest": (bytes, bytes, int),
    "encrypted_scores": (list, bytes),
    "decide_codes": (str, bytes, (int, float)),
}

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _holding(side: str) -> Callable[[_Method], _Method]:
    """A decorator: the method runs holding the replica's lock for ``side`` ("read" or "write")."""

    def wrap(method: _Method) -> _Method:
        @functools.wraps(method)
        def locked(self: "ShardReplica", *args: Any) -> Any:
            with getattr(self._lock, side)():
                return method(self, *args)

        return locked  # type: ignore[return-value]

    return wrap


_reading, _writing = _holding("read"), _holding("write")


class ReclaimNeeded(Exception):
    """Staging needs the key holder's reply to this reclaim request first."""

    def __init__(self, request: bytes) -> None:
        super().__init__("reclaim reply needed")
        self.request = request


class _ReclaimReplies:
    """The key holder as a replica sees it: the reclaim replies the service already obtained.

    Staging is a pure function of the gallery's state and these replies, so
    staging again with one more reply reaches the next request or the end.
    A reply of None stands for a busy key holder (rate limit).
    """

    def __init__(self, replies: dict[bytes, bytes | None]) -> None:
        self.replies = replies

    def reclaim(self, request: bytes, *, caller: str) -> bytes:
        if request not in self.replies:
            raise ReclaimNeeded(request)
        reply = self.replies[request]
        if reply is None:
            raise RateLimitExceededError("the key holder is busy")
        return reply


class ShardReplica:
    """The body of a replica actor (wrapped by ``ray.remote`` in :mod:`fpmatch.cluster.shards`)."""

    def __init__(self, profile: dict[str, Any], index: str, options: dict[str, Any]) -> None:
        self.profile = EdgeProfile.from_dict(profile)
        self._lock = ReadWriteLock()
        self._reads: ReadServer | None = None
        self._replies = _ReclaimReplies({})
        if self.profile.encrypted:
            options = {**options, "decider": self._replies, "caller": "shard-replica"}
        self.gallery = open_gallery(self.profile, index, **options)
        # One thread per probe: a node's cores serve its replicas side by side (threads of
        # several replicas on the same cores only contend).
        for part in ("codes", "ciphertext_rows", "blocks"):
            if hasattr(self.gallery, part):
                getattr(self.gallery, part).n_threads = 1

    @_reading
    def ping(self) -> int:
        return len(self.gallery)

    def node(self) -> str:
        """The id of the Ray node this replica runs on."""
        import ray  # only ever called inside a Ray worker

        return str(ray.get_runtime_context().get_node_id())

    def serve_reads(self, cert: bytes, key: bytes, ca: bytes) -> tuple[str, int]:
        """Listen for the service's reads on this node's address (TLS; peers certified by ``ca``)."""
        import ray

        if self._reads is None or self._reads.closed:
            context = tls_context(cert, key, ca, server=True)
            self._reads = ReadServer(self.read, context, ray.util.get_node_ip_address())
        return self._reads.address

    def read(self, method: str, args: list[Any]) -> Any:
        """One of :data:`READS` as its link asks it: every argument's type checked first."""
        types = READS.get(method) if isinstance(method, str) else None
        if types is None:
            raise InvalidInputError(f"{method!r} is not a read this replica answers")
        if len(args) != len(types) or any(isinstance(a, bool) or not isinstance(a, t) for a, t in zip(args, types)):
            raise InvalidInputError(f"{method} takes ({', '.join(getattr(t, '__name__', 'number') for t in types)})")
        return getattr(self, method)(*args)

    def stop_reads(self) -> None:
        """Close the read listener and end its connections (reads then come over Ray until the service
        asks for a new listener)."""
        if self._reads is not None:
            self._reads.close()

    @_writing
    def restore(self, templates: Sequence[TemplateTuple], rows: Sequence[tuple[bytes, int, int]]) -> int:
        stored = [StoredTemplate(*t) for t in templates]
        self.gallery.restore(stored, list(rows), None)
        return len(self.gallery)

    # -- writes: staged here, replayed on every replica after the store commits -------

    @_writing
    def stage_add(
        self, subjects: Sequence[str], messages: Sequence[bytes], replies: dict[bytes, bytes | None]
    ) -> dict[str, Any]:
        records = [EnrolmentRecord.from_bytes(m) for m in messages]
        self._replies.replies = replies
        try:
            staged = self.gallery.stage_add(list(subjects), records)
        except ReclaimNeeded as need:
            return {"reclaim": need.request}
        finally:
            self._replies.replies = {}
        return _plain(staged)

    @_writing
    def stage_remove(self, subjects: Sequence[str]) -> dict[str, Any]:
        return _plain(self.gallery.stage_remove(list(subjects)))

    @_writing
    def replay(self, change: Any, ids: Sequence[int]) -> int:
        self.gallery.replay(_owned(change), list(ids))
        return len(self.gallery)

    # -- reads ------------------------------------------------------------------

    @_reading
    def nearest(self, code: bytes, reliability: bytes, want: int) -> tuple[list[int], list[float]]:
        """The ``want`` (store id, weighted distance) nearest the probe's code, nearest first."""
        if len(reliability) % 4:
            raise InvalidInputError(f"bit reliabilities are 4-byte floats, got {len(reliability)} bytes")
        found = self.gallery.codes.nearest(  # type: ignore[attr-defined]
            np.frombuffer(code, dtype=np.uint8), np.frombuffer(reliability, dtype="<f4"), want, lambda _: True
        )
        return [id_ for id_, _ in found], [d for _, d in found]

    @_reading
    def decide_codes(self, subject: str, probe: bytes, threshold: float) -> bool:
        """1:1 of the ``hash`` scheme, decided here (no key holder)."""
        if self.profile.encrypted:
            raise InvalidInputError("1:1 under encryption is decided by the key holder, not by a shard")
        return self.gallery.decide(subject, check_message(ProbeMessage.from_bytes(probe), ProbeMessage, self.profile), threshold)

    @_reading
    def encrypted_scores(self, ids: Sequence[int], values: bytes) -> tuple[bytes, list[int]]:
        """Encrypted scores of a probe against the subjects stored under ``ids``, and those ids in score order."""
        if not self.profile.encrypted:
            raise InvalidInputError(f"a shard of the {self.profile.scheme} scheme holds no ciphertexts")
        unknown = [id_ for id_ in ids if not isinstance(id_, int) or isinstance(id_, bool) or not self.gallery.holds_id(id_)]
        if unknown:
            raise InvalidInputError(f"no subject is stored under id(s) {unknown[:5]!r} on this shard")
        if len(values) % 8:
            raise InvalidInputError(f"probe values are 8-byte integers, got {len(values)} bytes")
        request, order = self.gallery.encrypted_scores(list(ids), np.frombuffer(values, dtype="<i8"))  # type: ignore[attr-defined]
        return request.to_bytes(), order

    @_reading
    def codes(self) -> tuple[list[int], bytes]:
        """Every code held, by store id (for calibration from codes)."""
        index = self.gallery.index
        if index is None or not len(index):
            return [], b""
        ids = np.sort(index.ids())
        return ids.tolist(), index.reconstruct(ids).tobytes()

    @_reading
    def problems(self, templates: Sequence[TemplateTuple], rows: Sequence[tuple[bytes, int, int]]) -> list[str]:
        stored = {t[0]: StoredTemplate(*t) for t in templates}
        problems = self.gallery.problems(stored, list(rows))
        held = {s: self.gallery.id_of(s) for s in self.gallery.subjects()}
        if held != {s: t.id for s, t in stored.items()}:
            problems.append("subjects differ from the database")
        return problems


def _owned(value: Any) -> Any:
    """``value`` with every array copied into memory of its own: Ray hands arrays over read-only
    (shared memory), and a gallery keeps and later modifies what a change gives it."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _owned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_owned(v) for v in value)
    return value


def _plain(staged: Any) -> dict[str, Any]:
    """The parts of a ``Staged`` the service commits and replays (its ``apply`` closure stays here)."""
    return {
        "codes": staged.codes,
        "slots": staged.slots,
        "rows": staged.rows,
        "sealed": staged.sealed,
        "resealed": staged.resealed,
        "erased": staged.erased,
        "change": staged.change,
    }
