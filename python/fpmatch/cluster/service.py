"""ShardedMatchingService: the matching service with its gallery on Ray actors.

It *is* :class:`~fpmatch.MatchingService` (consent, purposes, audit, erasure
and the store as the source of truth, unchanged) holding a
:class:`~fpmatch.cluster.gallery.ShardedGallery` instead of an in-process one,
so every method and every outcome is the single service's.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from ..edge import EdgeProfile
from ..errors import InvalidInputError, StoreFormatError
from ..galleries import ProtectedGallery
from ..keys import ServiceKey
from ..service import SHARDS_SETTING, MatchingService, check_decider
from ..store import Store
from .gallery import ShardedGallery, template_tuple
from .placement import MAX_SHARDS, Placement, RowLayout, check_count
from .shards import DEFAULT_CALL_TIMEOUT, ShardReplicas

#: Replicas per shard unless told otherwise.
DEFAULT_REPLICAS = 2
#: Most replicas per shard.
MAX_REPLICAS = 16


class ShardedMatchingService(MatchingService):
    """A :class:`MatchingService` whose gallery is S shards of R replica actors. Use :meth:`open`."""

    _gallery: ShardedGallery

    @classmethod
    def open(  # type: ignore[override]
        cls,
        directory: str | os.PathLike[str],
        key: ServiceKey,
        *,
        shards: int | None = None,
        replicas: int = DEFAULT_REPLICAS,
        actor_options: Mapping[str, Any] | None = None,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        direct_reads: bool = True,
        **options: Any,
    ) -> "ShardedMatchingService":
        """Open the store as :meth:`MatchingService.open` does, with its gallery on Ray.

        Ray must be initialised (``ray.init()``, or ``ray.init(address="auto")``
        on a node of a running cluster). ``shards`` is fixed when the store is
        first opened by a sharded service (default 2) and must match afterwards;
        ``replicas`` per shard may change between openings. ``actor_options``
        are Ray's options for each replica actor (default: no CPU reserved;
        the replicas of a shard on distinct nodes when the cluster has enough,
        unless these options carry a ``scheduling_strategy`` of their own); ``call_timeout`` the seconds after which a
        replica that has not answered counts as lost. ``direct_reads`` sends identification's
        calls to the replicas over TLS links of their own (certificates of a CA made in memory
        for this opening) rather than as Ray calls, about 3 ms less per identification; turn it
        off where the service's node cannot open connections to the replicas' nodes beyond
        Ray's own ports (reads then go over Ray, as they also do whenever a link breaks).
        """
        check_count("replicas", replicas, MAX_REPLICAS)
        if not isinstance(call_timeout, (int, float)) or isinstance(call_timeout, bool) or not call_timeout > 0:
            raise InvalidInputError(f"call_timeout must be a positive number of seconds, got {call_timeout!r}")
        if not isinstance(direct_reads, bool):
            raise InvalidInputError(f"direct_reads must be True or False, got {direct_reads!r}")
        cluster = {
            "shards": shards, "replicas": replicas, "actor_options": actor_options,
            "call_timeout": float(call_timeout), "direct_reads": direct_reads,
        }  # fmt: skip
        return super().open(directory, key, _cluster=cluster, **options)  # type: ignore[return-value]

    @staticmethod
    def _load_gallery(
        store: Store, profile: EdgeProfile, index: str, keyholder: Any, caller: str, options: dict[str, Any]
    ) -> tuple[ProtectedGallery, str]:
        options = dict(options)
        cluster = options.pop("_cluster")
        shards = _shard_count(store, cluster["shards"])
        gallery_options = {name: value for name, value in options.items() if name in ("shortlist", "candidates", "ivf_train_at")}
        unknown = set(options) - set(gallery_options)
        if unknown:
            raise InvalidInputError(f"unknown gallery options: {', '.join(sorted(unknown))}")
        check_decider(keyholder, profile)
        replicas = ShardReplicas(
            shards,
            cluster["replicas"],
            (profile.to_dict(), index, gallery_options),  # open_gallery drops what the scheme does not take
            actor_options=cluster["actor_options"],
            call_timeout=cluster["call_timeout"],
            direct_reads=cluster["direct_reads"],
        )
        templates, stored_rows = store.templates(), store.row_count()
        layout = RowLayout.from_store(store.meta, stored_rows, shards)
        gallery = ShardedGallery(
            profile,
            Placement(store._key.subkey("cluster-placement"), shards),
            replicas,
            layout,
            decider=keyholder,
            caller=caller,
            candidates=options.get("candidates"),
            shortlist=options.get("shortlist"),
        )
        try:
            gallery.restore_from(templates, lambda shard: store.rows(layout.numbers_of(shard, stored_rows)))
        except BaseException:
            replicas.close()
            raise
        if store.meta(SHARDS_SETTING) is None:
            with store.transaction() as tx:
                tx.set_meta(SHARDS_SETTING, shards)
        store.drop_index_cache()  # a single service's cache; the replicas build their own indexes
        return gallery, "missing"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gallery.replicas.attach(self._read_shard, self._rw.write)

    def _read_shard(self, shard: int) -> tuple[list[Any], list[Any]]:
        """One shard's part of the store, for a replacement replica (called under the write lock): its
        subjects' rows and its ciphertext rows only, read from the store."""
        store, gallery = self._store, self._gallery
        stored_rows = store.row_count()
        layout = RowLayout.from_store(store.meta, stored_rows, gallery.shards)
        rows = store.rows(layout.numbers_of(shard, stored_rows))
        return [template_tuple(t) for t in store.templates(gallery.ids_on(shard))], rows

    @property
    def shards(self) -> int:
        return self._gallery.shards

    @property
    def replicas(self) -> ShardReplicas:
        """The replica actors (their handles, live counts, replacements let in)."""
        return self._gallery.replicas

    def cluster_status(self) -> dict[str, Any]:
        """Where the replicas run, per shard the node of each live replica, and whether every
        shard's replicas are on distinct nodes (see :meth:`ShardReplicas.status`)."""
        return self._gallery.replicas.status()

    def close(self) -> None:
        """Stop repairs, close the store as the single service does, and end every replica actor."""
        try:
            self._gallery.replicas.close()
        finally:
            super().close()


def _shard_count(store: Store, asked: int | None) -> int:
    recorded = store.meta(SHARDS_SETTING)
    if recorded is not None and asked is not None and asked != recorded:
        raise StoreFormatError(f"{store.directory} places its subjects on {recorded} shards, not {asked} (resharding is not supported)")
    shards = asked if asked is not None else recorded if recorded is not None else 2
    return check_count("shards", shards, MAX_SHARDS)
