"""Placement of subjects on shards and numbering of the shards' ciphertext rows in one store
(no Ray needed)."""

from __future__ import annotations

import numpy as np
import pytest

from fpmatch.cluster import Placement, RowLayout
from fpmatch.cluster.nodes import able_nodes, choose, demand
from fpmatch.errors import InvalidInputError, StoreFormatError


def test_placement_is_keyed_and_balanced() -> None:
    first, other = Placement(b"k" * 32, 4), Placement(b"j" * 32, 4)
    names = [f"subject-{i}" for i in range(4000)]
    shards = [first.shard_of(name) for name in names]
    assert shards == [first.shard_of(name) for name in names]  # stable
    assert min(np.bincount(shards, minlength=4)) > 900  # about a quarter each
    assert sum(a != other.shard_of(n) for a, n in zip(shards, names)) > 2500  # another key, another placement
    assert first.split(["a", "b", "c"]) == {s: [p for p, n in enumerate("abc") if first.shard_of(n) == s] for s in set(map(first.shard_of, "abc"))}
    with pytest.raises(InvalidInputError):
        Placement(b"k" * 32, 0)


def test_row_layout_numbers_rows_in_order_they_were_written() -> None:
    layout = RowLayout().extended(1, [0]).extended(0, [1, 0]).extended(1, [1, 0])
    assert layout.entries == [(1, 0), (0, 0), (0, 1), (1, 1)]
    assert layout.of_shard(0, ["a", "b", "c", "d"]) == ["b", "c"]
    assert RowLayout.from_setting(layout.setting(), 4, 2).entries == layout.entries
    assert RowLayout.from_setting(None, 3, 1).entries == [(0, 0), (0, 1), (0, 2)]
    with pytest.raises(StoreFormatError):
        RowLayout.from_setting(None, 3, 2)
    with pytest.raises(StoreFormatError):
        RowLayout.from_setting([[0, 0], [0, 0]], 2, 1)
    with pytest.raises(StoreFormatError):
        RowLayout.from_setting([[0, 0]], 2, 1)


def test_replicas_go_to_the_least_loaded_node_away_from_their_shard() -> None:
    nodes = ["a", "b", "c"]
    assert choose(nodes, avoid=[], load={}) == ("a", True)
    assert choose(nodes, avoid=["a"], load={"b": 2}) == ("c", True)  # apart first, then least loaded
    assert choose(nodes, avoid=["b"], load={}, suspect=["a"]) == ("c", True)  # away from where one was lost
    assert choose(nodes, avoid=["b", "c"], load={}, suspect=["a"]) == ("a", True)  # unless it is the only one apart
    assert choose(nodes, avoid=nodes, load={"a": 3, "b": 1, "c": 2}) == ("b", False)  # fewer nodes than replicas
    assert choose([], avoid=[], load={}) == (None, False)


def test_only_live_nodes_with_the_resources_asked_for_take_replicas() -> None:
    listed = [
        {"NodeID": "b", "Alive": True, "Resources": {"CPU": 4.0, "memory": 8e9}},
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 1.0, "memory": 64e9}},
        {"NodeID": "c", "Alive": False, "Resources": {"CPU": 8.0, "memory": 64e9}},
    ]
    assert able_nodes(listed, demand({"num_cpus": 0})) == ["a", "b"]
    assert able_nodes(listed, demand({"num_cpus": 2})) == ["b"]
    assert able_nodes(listed, demand({"memory": 32e9})) == ["a"]
    assert able_nodes(listed, demand({"resources": {"gallery": 1}})) == []
    assert demand({"num_cpus": 0, "num_gpus": 1, "resources": {"gallery": 2}}) == {"GPU": 1.0, "gallery": 2.0}
