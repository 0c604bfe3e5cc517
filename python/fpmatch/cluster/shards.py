"""The replica actors of every shard: calls with failover, writes to every live replica, repair.

A call goes to one live replica of its shard (round robin); when that
replica is dead or does not answer in time it is dropped (and killed, so it
can never answer late) and the call is retried on another. With none left the
call raises :class:`ShardUnavailableError`, which is retriable: a replacement
is started at once, rebuilt from the store and let in.

A replacement reads its shard from the store while holding the service's
write lock, so no write is half done; the writes that land while it restores
are logged and replayed on it before it joins. A replica that missed a write
is never let answer: a replica whose replay fails is dropped at once.

Where each replica runs is :mod:`fpmatch.cluster.nodes`' rule: the replicas of
a shard on distinct nodes when the cluster has enough (see :meth:`status`).

Reads (:data:`~fpmatch.cluster.replica.READS`) go over each replica's own TLS
link (:mod:`fpmatch.cluster.wire`) unless ``direct_reads`` is off; a link that
breaks is given up and the call asked again over Ray, which tells a dead
replica from a broken link, and the replica is asked to listen again after
:data:`RELINK_AFTER` seconds. A link that does not answer in time counts as a
replica lost, as a Ray call would.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import Counter
from contextlib import AbstractContextManager
from typing import Any, Callable, Mapping, Sequence

from ..errors import FpmatchError, ShardUnavailableError, StoreClosedError
from .nodes import NAMESPACE, NodeChooser, replica_name
from .nodes import log as placement_log
from .replica import READS, ShardReplica, TemplateTuple
from .wire import LinkBroken, LinkTimeout, ReadClient, server_name, tls_context

log = logging.getLogger("fpmatch.cluster")

#: Reads one shard's part of the store: (templates, rows in the shard's own order).
ShardLoader = Callable[[int], "tuple[list[TemplateTuple], list[tuple[bytes, int, int]]]"]
#: Default Ray options of a replica actor: no CPU reserved (its node is chosen by :mod:`.nodes`).
DEFAULT_ACTOR_OPTIONS: Mapping[str, Any] = {"num_cpus": 0}
#: Seconds a call may take before its replica counts as lost.
DEFAULT_CALL_TIMEOUT = 60.0
#: Seconds after a read link broke before the replica's reads try a new one.
RELINK_AFTER = 30.0


def require_ray() -> Any:
    """The ``ray`` module, or an ImportError saying how to get it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("fpmatch.cluster needs Ray: install the cluster extra (pip install 'fpmatch[cluster]')") from exc
    if not ray.is_initialized():
        raise FpmatchError("Ray is not initialised: call ray.init() (address='auto' on a cluster node) first")
    return ray


class ShardReplicas:
    """R replica actors for each of S shards."""

    def __init__(
        self,
        shards: int,
        replicas: int,
        body: tuple[dict[str, Any], str, dict[str, Any]],
        *,
        actor_options: Mapping[str, Any] | None = None,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        direct_reads: bool = True,
    ) -> None:
        self._ray = require_ray()
        self.shards = shards
        self.replicas = replicas
        self._body = body  # (profile dict, index kind, gallery options): all plain data
        self._options = dict(DEFAULT_ACTOR_OPTIONS if actor_options is None else actor_options)
        # A scheduling strategy of the caller's own replaces the distinct-node rule.
        self._chooser = None if "scheduling_strategy" in self._options else NodeChooser(self._ray, self._options)
        self.name = secrets.token_hex(4)  # this service's replicas among others on the cluster
        self._serial = itertools.count()
        self._where: dict[Any, str] = {}  # live replica -> the node it reported
        self._shared: set[int] = set()  # shards whose live replicas were last placed on a shared node
        self._planned: list[list[str]] = [[] for _ in range(shards)]  # nodes of replacements being rebuilt
        self._timeout = call_timeout
        self._actor = self._ray.remote(ShardReplica)
        self._live: list[list[Any]] = [[] for _ in range(shards)]
        self._turn = [itertools.count() for _ in range(shards)]
        self._lock = threading.RLock()
        self._logs: list[list[list[tuple[Any, list[int]]]]] = [[] for _ in range(shards)]
        self._repairs: list[threading.Thread] = []
        self._stop = threading.Event()
        self._loader: ShardLoader | None = None
        self._guard: Callable[[], AbstractContextManager[Any]] | None = None
        self._attached = threading.Event()
        self.rejoined: list[tuple[int, float]] = []  # (shard, time.monotonic()) per replacement let in
        self._links: dict[Any, ReadClient] = {}  # live replica -> the service's read link to it
        self._linking: dict[Any, Any] = {}  # started replica -> its serve_reads call
        self._credentials: dict[Any, tuple[bytes, bytes, str]] = {}  # replica -> (certificate, key, name)
        self._relink_at: dict[Any, float] = {}  # replica whose link broke -> when to try a new one
        self._ca = self._client_tls = None
        if direct_reads:
            from ..he.certs import MemoryCA

            self._ca = MemoryCA(f"fpmatch replicas of {self.name}")
            cert, key = self._ca.issue(f"service-{self.name}", client=True)
            self._client_tls = tls_context(cert, key, self._ca.pem, server=False)

    # -- life cycle ----------------------------------------------------------------

    def start(self, part: ShardLoader) -> None:
        """Start every replica (all at once), then restore them shard after shard from the shard's
        part of the store as ``part(shard)`` reads it: one shard's part is held here at a time."""
        started: list[list[Any]] = []
        load: Counter[str] = Counter()
        for shard in range(self.shards):
            chosen: list[str] = []
            started.append([])
            for _ in range(self.replicas):
                handle, node = self._spawn(shard, chosen, load)
                if node is not None:
                    chosen.append(node)
                    load[node] += 1
                started[shard].append(handle)
        try:
            for shard, handles in enumerate(started):
                templates, rows = (self._ray.put(value) for value in part(shard))  # once for all its replicas
                pending = [(handle, handle.restore.remote(templates, rows), handle.node.remote()) for handle in handles]
                for handle, restored, node in pending:
                    self._ray.get(restored)
                    self._where[handle] = self._ray.get(node)
                    self._link(handle)
                    self._live[shard].append(handle)
                del templates, rows, pending
        except BaseException:  # a shard's part could not be read or restored: no replica is left running
            for handle in itertools.chain.from_iterable(started):
                self._forget(handle)
                self._kill(handle)
            raise
        self._warn_if_shared()

    def attach(self, loader: ShardLoader, guard: Callable[[], AbstractContextManager[Any]]) -> None:
        """How replacements read their shard (``loader``) while no write is under way (``guard``)."""
        self._loader, self._guard = loader, guard
        self._attached.set()

    def close(self) -> None:
        """Stop repairs and kill every replica."""
        self._stop.set()
        self._attached.set()
        for thread in list(self._repairs):
            thread.join()
        with self._lock:
            for handle in itertools.chain.from_iterable(self._live):
                self._forget(handle)
                self._kill(handle)
            self._live = [[] for _ in range(self.shards)]
            self._where.clear()

    def live(self, shard: int) -> int:
        with self._lock:
            return len(self._live[shard])

    def handles(self, shard: int) -> list[Any]:
        """The live replicas of a shard (for tests and operations: e.g. to kill one)."""
        with self._lock:
            return list(self._live[shard])

    def check(self) -> list[int]:
        """Ping every replica: those that do not answer are dropped and replaced now rather than at
        their next call. Returns the live replicas per shard."""
        for shard in range(self.shards):
            self.ask_every(shard, "ping")
        return [self.live(shard) for shard in range(self.shards)]

    def repairing(self) -> bool:
        return any(thread.is_alive() for thread in self._repairs)

    def nodes(self, shard: int) -> list[str]:
        """The node of each live replica of ``shard``, in the order of :meth:`handles`."""
        with self._lock:
            return [self._where[handle] for handle in self._live[shard]]

    def status(self) -> dict[str, Any]:
        """Where the replicas run: ``shards`` (per shard, the node of each live replica),
        ``live_nodes`` (nodes of the cluster alive now), ``placement`` (the rule in force) and
        ``replicas_apart`` (every shard's live replicas on distinct nodes; False means that
        losing one node can take a whole shard until its replacements are rebuilt)."""
        shards = [self.nodes(shard) for shard in range(self.shards)]
        apart = all(len(set(nodes)) == len(nodes) for nodes in shards)
        if self._chooser is None:
            placement = "the scheduling_strategy of actor_options"
        elif apart:
            placement = "distinct nodes"
        else:
            placement = f"shared nodes: fewer live nodes than the {self.replicas} replicas of a shard"
        return {
            "service": self.name, "replicas": self.replicas, "placement": placement, "replicas_apart": apart,
            "live_nodes": sum(1 for node in self._ray.nodes() if node.get("Alive")),
            "direct_reads": sum(1 for handle in self._where if handle in self._links),
            "shards": [{"shard": shard, "nodes": nodes} for shard, nodes in enumerate(shards)],
        }  # fmt: skip

    # -- calls -----------------------------------------------------------------------

    def call(self, shard: int, method: str, *args: Any) -> Any:
        """``method(*args)`` on one live replica of ``shard``, failing over to the others."""
        return self.fan_out({shard: (method, args)})[shard]

    def fan_out(self, calls: Mapping[int, tuple[str, tuple[Any, ...]]]) -> dict[int, Any]:
        """One call per shard, all in flight at once; each fails over within its shard. An error a
        replica raised is raised here once every answer is in."""
        results: dict[int, Any] = {}
        raised: Exception | None = None
        waiting = dict(calls)
        while waiting:
            sent = {}
            for shard, (method, args) in waiting.items():
                handle = self._pick(shard)
                sent[shard] = (handle, self._send(handle, method, args))
            failed = {}
            for shard, (handle, pending) in sent.items():
                try:
                    results[shard] = self._receive(pending)
                except _Lost:
                    self._drop(shard, handle)
                    failed[shard] = waiting[shard]
                except LinkBroken as exc:
                    log.warning("the read link to a replica of shard %d broke (%s): its reads go over Ray", shard, exc)
                    self._broken(handle)
                    failed[shard] = waiting[shard]
                except Exception as exc:  # the replica's own error: the others' answers are still read
                    raised = raised or exc
            waiting = failed
        if raised is not None:
            raise raised
        return results

    def _send(self, handle: Any, method: str, args: tuple[Any, ...]) -> tuple[ReadClient | None, Any]:
        link = (self._links.get(handle) or self._relinked(handle)) if method in READS else None
        if link is not None:
            try:
                return link, link.send(method, args)
            except LinkBroken:
                self._broken(handle)
        return None, getattr(handle, method).remote(*args)

    def _receive(self, pending: tuple[ReadClient | None, Any]) -> Any:
        link, sent = pending
        if link is None:
            return self._get(sent)
        try:
            return link.receive(sent)
        except LinkTimeout as exc:
            raise _Lost() from exc

    def ask_every(self, shard: int, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every live replica of ``shard`` (those that fail are dropped)."""
        with self._lock:
            sent = [(handle, getattr(handle, method).remote(*args)) for handle in self._live[shard]]
        answers = []
        for handle, ref in sent:
            try:
                answers.append(self._get(ref))
            except _Lost:
                self._drop(shard, handle)
        return answers

    def replay(self, shard: int, change: Any, ids: Sequence[int]) -> None:
        """Apply a committed change on every live replica of ``shard`` (and log it for those restoring)."""
        ids = list(ids)
        with self._lock:
            sent = [(handle, handle.replay.remote(change, ids)) for handle in self._live[shard]]
            for handle, ref in sent:
                try:
                    self._get(ref)
                except _Lost:
                    self._drop(shard, handle)
            for log in self._logs[shard]:
                log.append((change, ids))

    def _pick(self, shard: int) -> Any:
        with self._lock:
            live = self._live[shard]
            if not live:
                raise ShardUnavailableError(
                    f"no live replica of shard {shard}: a replacement is being rebuilt from the store; retry shortly"
                )
            return live[next(self._turn[shard]) % len(live)]

    def _get(self, ref: Any) -> Any:
        exceptions = self._ray.exceptions
        # ActorUnschedulableError: the node a replica was pinned to left before it started.
        lost = (exceptions.RayActorError, exceptions.ActorUnavailableError, exceptions.GetTimeoutError,
                exceptions.ActorUnschedulableError)  # fmt: skip
        try:
            return self._ray.get(ref, timeout=self._timeout)
        except lost as exc:
            raise _Lost() from exc
        except exceptions.RayTaskError as exc:  # the replica raised: the same error as in-process
            cause = exc.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise

    # -- failure and repair -------------------------------------------------------------

    def _spawn(self, shard: int, chosen: Sequence[str] = (), load: Mapping[str, int] | None = None,
               suspect: Sequence[str] = (), replacement: bool = False) -> tuple[Any, str | None]:
        """A new replica of ``shard`` (not yet restored) and the node it was pinned to (None: Ray's choice).
        It avoids the nodes of the shard's live replicas and ``chosen``, and ``suspect`` if it can. A
        ``replacement``'s node is kept in ``_planned`` (the caller removes it) so that other
        replacements of the shard rebuilt at the same time keep away from it."""
        serial = next(self._serial)
        options = dict(self._options, name=replica_name(self.name, shard, serial), namespace=NAMESPACE)
        node = None
        if self._chooser is not None:
            with self._lock:
                avoid = set(chosen) | set(self._planned[shard]) | {self._where[h] for h in self._live[shard]}
                if load is None:
                    load = Counter(self._where.values()) + Counter(itertools.chain.from_iterable(self._planned))
            node, apart = self._chooser.choose(avoid, load, suspect)
            if node is not None:
                options["scheduling_strategy"] = self._chooser.strategy(node)
            with self._lock:
                (self._shared.discard if apart else self._shared.add)(shard)
                if node is not None and replacement:
                    self._planned[shard].append(node)
        handle = self._actor.options(**options).remote(*self._body)
        if self._ca is not None:  # the listener starts before the restore (actor calls run in order)
            name = server_name(f"shard-{shard}-replica-{serial}", self.name)
            self._credentials[handle] = (*self._ca.issue(name, hosts=[name]), name)
            self._listen(handle)
        return handle, node

    def _listen(self, handle: Any) -> None:
        """Ask a replica to listen for reads (its answer is taken by :meth:`_link`)."""
        cert, key, _ = self._credentials[handle]
        assert self._ca is not None
        self._linking[handle] = handle.serve_reads.remote(cert, key, self._ca.pem)

    def _link(self, handle: Any) -> None:
        """Open the read link to a replica that has restored (reads stay on Ray when it cannot listen)."""
        ref = self._linking.pop(handle, None)
        if ref is None:
            return
        try:
            host, port = self._get(ref)
        except Exception as exc:  # lost (its restore says so too) or could not listen
            log.warning("a replica could not open its read link (%s): its reads go over Ray", exc)
            return
        credentials = self._credentials.get(handle)
        if credentials is None:  # dropped meanwhile
            return
        assert self._client_tls is not None
        self._links[handle] = ReadClient((host, port), credentials[2], self._client_tls, self._timeout)
        self._relink_at.pop(handle, None)

    def _relinked(self, handle: Any) -> ReadClient | None:
        """A new read link to a replica whose link broke at least RELINK_AFTER seconds ago (None: not
        due yet, or it failed again; then tried again after as long)."""
        if handle not in self._relink_at:  # the usual case, without the lock: no link ever broke
            return None
        with self._lock:
            due = self._relink_at.get(handle)
            if due is None or time.monotonic() < due or handle not in self._credentials:
                return None
            self._relink_at[handle] = time.monotonic() + RELINK_AFTER
            self._listen(handle)
        self._link(handle)
        return self._links.get(handle)

    def _broken(self, handle: Any) -> None:
        """A replica's link broke: its reads go over Ray, and a new link is tried later."""
        self._unlink(handle)
        if handle in self._credentials:
            self._relink_at[handle] = time.monotonic() + RELINK_AFTER

    def _unlink(self, handle: Any) -> None:
        self._linking.pop(handle, None)
        link = self._links.pop(handle, None)
        if link is not None:
            link.close()

    def _forget(self, handle: Any) -> None:
        """A replica that is gone: its link, its credentials and any retry."""
        self._unlink(handle)
        self._credentials.pop(handle, None)
        self._relink_at.pop(handle, None)

    def _warn_if_shared(self) -> None:
        with self._lock:
            shared = sorted(self._shared)
        if shared:
            placement_log.warning(
                "the replicas of shard(s) %s share a node: the cluster has fewer live nodes than the %d "
                "replicas per shard, so losing one node can leave a shard unavailable until it is rebuilt",
                ", ".join(map(str, shared)), self.replicas,
            )  # fmt: skip

    def _kill(self, handle: Any) -> None:
        try:
            self._ray.kill(handle, no_restart=True)
        except Exception:  # already gone
            pass

    def _drop(self, shard: int, handle: Any) -> None:
        """A replica failed: never ask it again, and start a replacement."""
        with self._lock:
            if handle not in self._live[shard]:
                return
            self._live[shard].remove(handle)
            lost_on = self._where.pop(handle, None)
            self._forget(handle)
            self._kill(handle)
            if self._stop.is_set():
                return
            suspect = [lost_on] if lost_on is not None else []
            thread = threading.Thread(
                target=self._repair, args=(shard, suspect), name=f"fpmatch-shard-{shard}-repair", daemon=True
            )
            self._repairs = [t for t in self._repairs if t.is_alive()] + [thread]
            thread.start()

    def _repair(self, shard: int, suspect: list[str]) -> None:
        """Rebuild one replica of ``shard`` from the store, away from its shard's other replicas and,
        where the cluster allows, from ``suspect`` (the node the lost one ran on)."""
        self._attached.wait()
        while not self._stop.is_set():
            log: list[tuple[Any, list[int]]] = []
            handle = planned = None
            try:
                assert self._guard is not None and self._loader is not None
                with self._guard():  # no write is under way while the shard is read
                    if self._stop.is_set():
                        return
                    templates, rows = self._loader(shard)
                    with self._lock:
                        self._logs[shard].append(log)
                handle, planned = self._spawn(shard, suspect=suspect, replacement=True)
                self._get(handle.restore.remote(templates, rows))
                node = self._get(handle.node.remote())
                self._link(handle)
                with self._lock:
                    for change, ids in log:  # writes committed while it restored
                        self._get(handle.replay.remote(change, ids))
                    if not self._stop.is_set():
                        self._live[shard].append(handle)
                        self._where[handle] = node
                        self.rejoined.append((shard, time.monotonic()))
                        self._warn_if_shared()
                        handle = None
                return
            except StoreClosedError:
                return
            except Exception:  # lost again, or the store could not be read: try again shortly
                self._stop.wait(0.5)
            finally:
                with self._lock:
                    self._logs[shard] = [other for other in self._logs[shard] if other is not log]
                    if planned is not None:
                        self._planned[shard].remove(planned)
                        planned = None
                if handle is not None:
                    self._forget(handle)
                    self._kill(handle)


class _Lost(Exception):
    """A replica died, became unreachable or did not answer in time."""
