"""Placement of subjects on shards and numbering of the shards' ciphertext rows in one store
(no Ray needed)."""

from __future__ import annotations

import numpy as np
import pytest

from fpmatch.cluster import Placement, RowLayout, placement
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


def test_row_layout_numbers_rows_in_order_they_were_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "LAYOUT_CHUNK", 2)
    layout, settings, written = RowLayout(), {}, []
    for shard, locals_ in [(1, [0]), (0, [1, 0]), (1, [1, 0])]:
        pending = layout.fresh(shard, locals_)
        written.append(sorted(layout.settings_for(pending)))
        settings.update(layout.settings_for(pending))
        layout.append(pending)
    assert layout.entries == [(1, 0), (0, 0), (0, 1), (1, 1)]
    assert layout.of_shard(0, ["a", "b", "c", "d"]) == ["b", "c"]
    assert settings == {"cluster_rows.0": [[1, 0], [0, 0]], "cluster_rows.1": [[0, 1], [1, 1]]}
    assert written[-1] == ["cluster_rows.1"]  # only the chunk the new row falls in
    assert layout.fresh(0, [0, 1, 2], [(0, 2)]) == [] and layout.fresh(0, [3, 2]) == [(0, 2), (0, 3)]
    assert RowLayout.from_store(settings.get, 4, 2).entries == layout.entries
    assert RowLayout.from_setting(None, 3, 1).entries == [(0, 0), (0, 1), (0, 2)]
    assert RowLayout.from_store({}.get, 3, 1).entries == [(0, 0), (0, 1), (0, 2)]
    with pytest.raises(StoreFormatError):
        RowLayout.from_setting(None, 3, 2)
    with pytest.raises(StoreFormatError):
        RowLayout.from_setting([[0, 0], [0, 0]], 2, 1)
    with pytest.raises(StoreFormatError):
        RowLayout.from_setting([[0, 0]], 2, 1)
    for broken in ({"cluster_rows.0": [[1, 0], [0, 0]]}, {**settings, "cluster_rows.1": "x"}, {**settings, "cluster_rows.0": [[1, 0]] * 3}):
        with pytest.raises(StoreFormatError):
            RowLayout.from_store(broken.get, 4, 2)


def test_a_layout_of_earlier_versions_is_rewritten_in_chunks_at_its_next_new_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "LAYOUT_CHUNK", 2)
    settings: dict = {"cluster_rows": [[1, 0], [0, 0], [0, 1]]}
    layout = RowLayout.from_store(settings.get, 3, 2)
    assert layout.entries == [(1, 0), (0, 0), (0, 1)]
    assert layout.settings_for([]) == {"cluster_rows.0": [[1, 0], [0, 0]], "cluster_rows.1": [[0, 1]], "cluster_rows": None}
    pending = layout.fresh(1, [1])
    settings.update(layout.settings_for(pending))
    layout.append(pending)
    assert settings == {"cluster_rows": None, "cluster_rows.0": [[1, 0], [0, 0]], "cluster_rows.1": [[0, 1], [1, 1]]}
    assert RowLayout.from_store(settings.get, 4, 2).entries == layout.entries
    assert sorted(layout.settings_for(layout.fresh(0, [2]))) == ["cluster_rows.2"]


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
