"""Properties of every byte format: what is written parses back to the same thing, and
arbitrary bytes are accepted or refused with a typed fpmatch error, nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fpmatch import (
    AuthenticationError,
    EdgeProfile,
    EnrolmentRecord,
    FlatIndex,
    HashKey,
    HNSWIndex,
    InvalidInputError,
    KeyFileError,
    MessageFormatError,
    ProbeMessage,
    ServiceKey,
    load_index,
)
from fpmatch.errors import FpmatchError
from fpmatch.he import reclaim
from fpmatch.he.errors import CiphertextFormatError
from fpmatch.he.scores import EncryptedScores
from fpmatch.store_tags import Census, RowTagger

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY_ID = "00112233445566ff"
Q = (1 << 50) - 27
MAC = bytes(range(32))

profile_ids = st.binary(min_size=8, max_size=8).map(bytes.hex)
# An empty part is an absent one on the wire (test_an_empty_message_part_is_an_absent_one).
codes = st.none() | hnp.arrays(np.uint8, st.integers(1, 64))
reliabilities = st.none() | hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(0, 1, width=32))
values = st.none() | hnp.arrays(np.int64, st.integers(1, 64))


def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.dtype == b.dtype and a.tobytes() == b.tobytes())


@PROPERTY
@given(kind=st.sampled_from([EnrolmentRecord, ProbeMessage]), pid=profile_ids, code=codes, rel=reliabilities, val=values)
def test_edge_messages_round_trip(kind: type, pid: str, code: np.ndarray | None, rel: np.ndarray | None, val: np.ndarray | None) -> None:
    message = kind(pid, code, rel, val)
    data = message.to_bytes()
    parsed = kind.from_bytes(data)
    assert parsed.profile_id == pid and same(parsed.code, code) and same(parsed.values, val)
    assert same(parsed.reliability, rel) and parsed.to_bytes() == data


def test_an_empty_message_part_is_an_absent_one() -> None:
    empty = np.zeros(0, dtype=np.int64)
    parsed = EnrolmentRecord.from_bytes(EnrolmentRecord("00" * 8, None, None, empty).to_bytes())
    assert parsed.values is None and parsed.to_bytes() == EnrolmentRecord("00" * 8, None, None, None).to_bytes()


@PROPERTY
@given(data=st.binary(max_size=512))
def test_edge_messages_refuse_arbitrary_bytes_with_a_typed_error(data: bytes) -> None:
    for kind in (EnrolmentRecord, ProbeMessage):
        try:
            kind.from_bytes(data)
        except MessageFormatError:
            pass


@st.composite
def score_requests(draw: st.DrawFn) -> EncryptedScores:
    n = draw(st.sampled_from([8, 16]))
    rows = draw(st.integers(1, 3))
    count = draw(st.integers(1, 5))
    a = draw(hnp.arrays(np.int64, (rows, n), elements=st.integers(0, Q - 1)))
    b = draw(hnp.arrays(np.int64, count, elements=st.integers(0, Q - 1)))
    index = draw(hnp.arrays(np.int64, count, elements=st.integers(0, n - 1)))
    row = draw(hnp.arrays(np.int64, count, elements=st.integers(0, rows - 1)))
    return EncryptedScores(KEY_ID, draw(st.integers(1, 40)), Q, a, b, index, row)


@PROPERTY
@given(request=score_requests())
def test_encrypted_scores_round_trip(request: EncryptedScores) -> None:
    data = request.to_bytes()
    parsed = EncryptedScores.from_bytes(data, key_id=KEY_ID, n=request.n, q=Q)
    assert parsed.to_bytes() == data and parsed.scale_bits == request.scale_bits
    for name in ("a", "b", "index", "row"):
        assert np.array_equal(getattr(parsed, name), getattr(request, name))


@PROPERTY
@given(data=st.binary(max_size=512), n=st.sampled_from([8, 16]))
def test_he_messages_refuse_arbitrary_bytes_with_a_typed_error(data: bytes, n: int) -> None:
    for parse in (
        lambda: EncryptedScores.from_bytes(data, key_id=KEY_ID, n=n, q=Q),
        lambda: reclaim.parse_request(data, key_id=KEY_ID, n=n, q=Q, max_rows=4),
        lambda: reclaim.parse_reply(data, key_id=KEY_ID, n=n, q=Q, rows=1),
    ):
        try:
            parse()
        except FpmatchError:
            pass


@PROPERTY
@given(
    n=st.sampled_from([8, 16]),
    rows=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_reclaim_messages_round_trip(n: int, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    c1 = rng.integers(-(Q // 2), Q // 2, size=(rows, n), dtype=np.int64)
    mask = rng.integers(0, 2, size=(rows, n)).astype(bool)
    got_c1, got_mask = reclaim.parse_request(reclaim.reclaim_request(KEY_ID, Q, c1, mask), key_id=KEY_ID, n=n, q=Q, max_rows=4)
    assert np.array_equal(got_c1, np.mod(c1, Q)) and np.array_equal(got_mask, mask)
    c0 = rng.integers(-(Q // 2), Q // 2, size=(rows, n), dtype=np.int64)
    reply = reclaim.reclaim_reply(KEY_ID, Q, c0, c1)
    back0, back1 = reclaim.parse_reply(reply, key_id=KEY_ID, n=n, q=Q, rows=rows)
    assert np.array_equal(back0, c0) and np.array_equal(back1, c1)
    with pytest.raises(CiphertextFormatError):
        reclaim.parse_reply(reply, key_id=KEY_ID, n=n, q=Q, rows=rows + 1)


@PROPERTY
@given(
    kind=st.sampled_from(["flat", "hnsw"]),
    bits=st.sampled_from([64, 128, 256]),
    n=st.integers(0, 40),
    removed=st.integers(0, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_indexes_round_trip(kind: str, bits: int, n: int, removed: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    index = FlatIndex(bits) if kind == "flat" else HNSWIndex(bits, m=8)
    stored = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    ids = rng.choice(1 << 40, size=n, replace=False).astype(np.int64)
    index.add(stored, ids)
    index.remove(ids[: min(removed, n)])
    data = index.serialize(MAC)
    loaded = load_index(data, MAC)
    assert sorted(loaded.ids().tolist()) == sorted(index.ids().tolist())
    live = index.ids()
    assert np.array_equal(loaded.reconstruct(live), index.reconstruct(live))
    if len(live):
        query = stored[:1]
        assert np.array_equal(loaded.search(query, 3).distances, index.search(query, 3).distances)
    with pytest.raises(AuthenticationError):
        load_index(data, bytes(32))


@PROPERTY
@given(data=st.binary(max_size=1024))
def test_index_bytes_are_authenticated_before_anything_is_parsed(data: bytes) -> None:
    with pytest.raises(AuthenticationError):
        load_index(data, MAC)


@PROPERTY
@given(secret=st.binary(min_size=16, max_size=64), kind=st.sampled_from([HashKey, ServiceKey]))
def test_key_files_round_trip(tmp_path_factory: pytest.TempPathFactory, secret: bytes, kind: type) -> None:
    path = tmp_path_factory.mktemp("keys") / "k.key"
    key = kind(secret)
    key.save(path)
    loaded = kind.load(path)
    assert loaded.secret == secret and loaded.key_id == key.key_id
    assert kind.from_file_bytes(path.read_bytes()).secret == secret


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@PROPERTY
@given(data=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_key_files_refuse_arbitrary_bytes_with_a_typed_error(data: bytes) -> None:
    for kind in (HashKey, ServiceKey):
        with pytest.raises(KeyFileError):
            kind.from_file_bytes(data)


@PROPERTY
@given(value=st.dictionaries(st.sampled_from(["scheme", "dim", "edge_key_id", "bits", "hash_scheme", "narrow_cone", "he_context"]), json_values))
def test_edge_profiles_from_any_dict_are_valid_or_refused(value: dict) -> None:
    try:
        profile = EdgeProfile.from_dict(value)
    except InvalidInputError:
        return
    assert EdgeProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


fields = st.lists(st.none() | st.integers() | st.text(max_size=8) | st.binary(max_size=8), max_size=4)


@PROPERTY
@given(a=fields, b=fields, id_a=st.integers(0, 5), id_b=st.integers(0, 5))
def test_row_tags_tell_apart_any_two_different_rows(a: list, b: list, id_a: int, id_b: int) -> None:
    tagger = RowTagger(MAC, b"store-one-id-123")
    same_row = (id_a, [(type(x), x) for x in a]) == (id_b, [(type(x), x) for x in b])
    assert (tagger.tag("subjects", id_a, a) == tagger.tag("subjects", id_b, b)) == same_row
    assert tagger.tag("subjects", id_a, a) != RowTagger(MAC, b"store-two-id-456").tag("subjects", id_a, a)
    assert tagger.verify("subjects", id_a, a, tagger.tag("subjects", id_a, a))


@PROPERTY
@given(tags=st.lists(st.binary(min_size=32, max_size=32), max_size=8), seed=st.randoms())
def test_a_census_does_not_depend_on_order_and_undoes_exactly(tags: list, seed) -> None:
    census = Census.of(tags)
    shuffled = list(tags)
    seed.shuffle(shuffled)
    assert Census.of(shuffled) == census and Census.from_json(census.to_json()) == census
    for tag in tags:
        census.remove(tag)
    assert census == Census()
