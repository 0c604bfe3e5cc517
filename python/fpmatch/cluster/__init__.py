"""Many machines: the matching service with its gallery sharded over Ray actors.

Install the ``cluster`` extra (Ray). :class:`ShardedMatchingService` has the
methods and outcomes of :class:`fpmatch.MatchingService`; subjects are placed
on shards by a keyed hash of their id, each shard is R replica actors, and the
store stays the source of truth from which any replica is rebuilt. See the
README section "Many machines".
"""

from __future__ import annotations

from .gallery import ShardedGallery
from .placement import Placement, RowLayout
from .service import DEFAULT_REPLICAS, ShardedMatchingService
from .shards import ShardReplicas

__all__ = ["DEFAULT_REPLICAS", "Placement", "RowLayout", "ShardReplicas", "ShardedGallery", "ShardedMatchingService"]
