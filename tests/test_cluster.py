"""The sharded matching service on a real local Ray runtime: the same outcomes as a single service
holding the same subjects, for every scheme and index; consent, withdrawal and expiry routed to the
shards and confirmed; the shard count recorded in the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import service_support as ss
from cluster_support import answers, open_sharded, open_single, populate, ray_runtime  # noqa: F401
from fpmatch import VerificationOutcome
from fpmatch.cluster.placement import LAYOUT_SETTING
from fpmatch.errors import InvalidInputError, ShardUnavailableError, StoreFormatError
from fpmatch.store import Transaction

pytestmark = pytest.mark.usefixtures("ray_runtime")

CASES = [("hash", "flat"), ("hash", "ivf"), ("hash", "hnsw"), ("hybrid", "flat"), ("hybrid", "ivf"), ("hybrid", "hnsw"), ("he", "flat")]


def _probes(names: list[str]) -> dict[str, np.ndarray]:
    probes = {f"{name}#1": ss.sample(name, 1) for name in names}
    probes.update({f"stranger-{i}": ss.stranger(i) for i in range(6)})
    return probes


def _rank1(found: dict[str, object]) -> dict[str, object]:
    return {key: value[:1] if isinstance(value, list) else value for key, value in found.items()}


@pytest.mark.parametrize(("scheme", "index"), CASES)
def test_agreement_with_a_single_service(tmp_path: Path, scheme: str, index: str) -> None:
    """Every 1:1 and 1:N outcome equals the single service's: agreement 1.0.

    Flat indexes are exact: whole answers agree. IVF and HNSW are approximate and
    each shard learns its own (IVF trains per shard here): answers agree at rank 1,
    and a shard's candidates can only add to what one index would have found."""
    clock = ss.ManualClock()
    options = {"ivf_train_at": 64} if index == "ivf" else {}
    n = 150 if index == "ivf" else 40
    names = [f"p{i}" for i in range(n)]
    with open_sharded(tmp_path / "sharded", clock, scheme, index=index, shards=3, replicas=2, **options) as sharded, open_single(
        tmp_path / "single", clock, scheme, index=index, **options
    ) as single:
        populate([sharded, single], names)
        populate([sharded, single], ["pay-0", "pay-1", "pay-2"], ("payment",))  # never matched for entry
        probes = _probes(names[:: max(1, n // 20)] + ["pay-0", "pay-1"])
        expected = answers(single, probes)
        got = answers(sharded, probes)
        if index != "flat":
            expected, got = _rank1(expected), _rank1(got)
        agreement = np.mean([got[key] == expected[key] for key in expected])
        assert agreement == 1.0, {key: (got[key], expected[key]) for key in expected if got[key] != expected[key]}
        assert any(found for key, found in expected.items() if key.startswith("identify p"))  # mates are found
        assert all(found == [] or not found[0].startswith("pay") for found in got.values() if isinstance(found, list))
        assert sharded.check_integrity().ok
        counts = [sharded.service.replicas.live(s) for s in range(3)]
        assert counts == [2, 2, 2]


@pytest.mark.parametrize("scheme", ["hash", "hybrid"])
def test_ineligible_subjects_never_hide_eligible_ones(tmp_path: Path, scheme: str) -> None:
    """Shards whose nearest candidates are mostly not consenting to the purpose are searched
    deeper, as one gallery is: the answers stay the single service's."""
    clock = ss.ManualClock()
    payers, entrants = [f"pay-{i}" for i in range(120)], [f"in-{i}" for i in range(6)]
    with open_sharded(tmp_path / "sharded", clock, scheme, shards=2, replicas=1) as sharded, open_single(
        tmp_path / "single", clock, scheme
    ) as single:
        populate([sharded, single], payers, ("payment",))
        populate([sharded, single], entrants)
        probes = _probes(entrants)
        expected = answers(single, probes)
        assert answers(sharded, probes) == expected
        assert all(expected[f"identify {name}#1"][:1] == [name] for name in entrants)


def test_writes_are_routed_and_confirmed_by_every_replica(tmp_path: Path) -> None:
    """Consent withdrawal and expiry erase the subject from the store and every replica of its shard
    before the call returns; re-enrolment reclaims the freed slot; a reopened service agrees."""
    clock = ss.ManualClock()
    names = [f"p{i}" for i in range(24)]
    with open_sharded(tmp_path / "s", clock, "hybrid", shards=2, replicas=2) as svc:
        populate([svc], names)
        ss.enrol_people(svc, ["short"], days=5)
        code = svc.store._connection().execute("SELECT code FROM subjects WHERE subject = 'p3'").fetchone()[0]
        assert svc.identify(ss.sample("p3", 1), "entry")[0].subject == "p3"
        assert svc.withdraw("p3") is True
        assert "p3" not in svc and svc.verify("p3", ss.sample("p3", 1), "entry") is VerificationOutcome.USE_ALTERNATIVE
        assert all(m.subject != "p3" for m in svc.identify(ss.sample("p3", 1), "entry"))
        assert ss.files_containing(tmp_path / "s", bytes(code)) == []
        report = svc.check_integrity()  # compares every live replica with the store
        assert report.ok, report.problems
        clock.advance(days=6)
        assert svc.expire() == ["short"]
        assert "short" not in svc and svc.check_integrity().ok
        ss.grant(svc.service, "p3")
        svc.enrol("p3", ss.sample("p3", 0))
        assert svc.identify(ss.sample("p3", 1), "entry")[0].subject == "p3"
        assert svc.check_integrity().ok
        _shard_reads_agree_with_the_whole_store(svc.service)
    with open_sharded(tmp_path / "s", clock, "hybrid", replicas=1) as svc:
        assert svc.service.shards == 2 and len(svc) == 24
        assert svc.identify(ss.sample("p3", 1), "entry")[0].subject == "p3"
        assert svc.check_integrity().ok


def _shard_reads_agree_with_the_whole_store(service) -> None:
    """A replacement replica reads its shard's subjects and rows only: the same as its part of the whole store."""
    from fpmatch.cluster.placement import RowLayout

    store = service.store
    rows = store.rows()
    layout = RowLayout.from_store(store.meta, len(rows), service.shards)
    whole = service._gallery.split_store(store.templates(), rows, layout)
    for shard in range(service.shards):
        part = service._read_shard(shard)
        assert part == whole[shard] and part[0] and part[1]
    assert sum(len(service._read_shard(s)[1]) for s in range(service.shards)) == len(rows)


def test_the_store_keeps_its_shard_count(tmp_path: Path) -> None:
    clock = ss.ManualClock()
    with open_sharded(tmp_path / "s", clock, "hybrid", shards=2, replicas=1) as svc:
        populate([svc], [f"p{i}" for i in range(8)])
    with pytest.raises(StoreFormatError, match="2 shards"):
        open_sharded(tmp_path / "s", clock, "hybrid", shards=3, replicas=1)
    with pytest.raises(StoreFormatError, match="ShardedMatchingService"):
        open_single(tmp_path / "s", clock, "hybrid")
    with pytest.raises(InvalidInputError, match="replicas"):
        open_sharded(tmp_path / "s", clock, "hybrid", replicas=0)


def test_a_single_shard_store_is_a_single_service_store(tmp_path: Path) -> None:
    """One shard numbers its rows as a single gallery does: either service opens the other's store."""
    clock = ss.ManualClock()
    names = [f"p{i}" for i in range(12)]
    with open_single(tmp_path / "s", clock, "hybrid") as single:
        populate([single], names)
        expected = answers(single, _probes(names[:4]))
    with open_sharded(tmp_path / "s", clock, "hybrid", shards=1, replicas=1) as svc:
        assert answers(svc, _probes(names[:4])) == expected
        ss.enrol_people(svc, ["late"])
    with open_single(tmp_path / "s", clock, "hybrid") as single:
        assert single.identify(ss.sample("late", 1), "entry")[0].subject == "late"
        assert single.check_integrity().ok


def test_a_shard_without_live_replicas_is_a_retriable_error(tmp_path: Path, ray_runtime) -> None:  # noqa: F811
    clock = ss.ManualClock()
    with open_sharded(tmp_path / "s", clock, "hash", shards=2, replicas=1) as svc:
        populate([svc], [f"p{i}" for i in range(10)])
        replicas = svc.service.replicas
        replicas._attached.clear()  # hold the replacement back so the gap can be seen
        (handle,) = replicas.handles(0)
        ray_runtime.kill(handle)
        with pytest.raises(ShardUnavailableError, match="retry"):
            for _ in range(3):
                svc.identify(ss.sample("p1", 1), "entry")
        replicas._attached.set()
        _wait_for(lambda: replicas.live(0) == 1)
        assert svc.identify(ss.sample("p1", 1), "entry")[0].subject == "p1"
        assert svc.check_integrity().ok


def _wait_for(condition, timeout: float = 60.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def test_a_sharded_service_on_a_postgresql_store(tmp_path: Path, postgres_server) -> None:
    """PostgreSQL as the source of truth of a sharded service: the same answers as a single service,
    a withdrawal erased from every replica and from every file of the server's data directory,
    and a service reopened from the database alone (an empty directory) agrees."""
    clock = ss.ManualClock()
    names = [f"pg-shard-{i}" for i in range(24)]  # templates of their own: the server holds other tests' stores
    database = postgres_server.conninfo()
    with open_sharded(tmp_path / "s", clock, "hybrid", shards=2, replicas=2, database=database) as sharded, open_single(
        tmp_path / "single", clock, "hybrid"
    ) as single:
        populate([sharded, single], names)
        probes = _probes(names[::4])
        assert answers(sharded, probes) == answers(single, probes)
        code = ss.protected_bytes(sharded.service, "pg-shard-4")[0]
        assert sharded.withdraw("pg-shard-4") is True
        assert all(m.subject != "pg-shard-4" for m in sharded.identify(ss.sample("pg-shard-4", 1), "entry"))
        assert sharded.check_integrity().ok
        _shard_reads_agree_with_the_whole_store(sharded.service)
    assert ss.files_containing(postgres_server.data, code) == []
    assert ss.files_containing(tmp_path / "s", code) == []
    with open_sharded(tmp_path / "elsewhere", clock, "hybrid", replicas=1, database=database) as again:
        assert again.service.shards == 2 and len(again) == 23 and "pg-shard-4" not in again
        assert again.identify(ss.sample("pg-shard-8", 1), "entry")[0].subject == "pg-shard-8"
        assert again.audit_verify().ok


def test_the_row_layout_is_written_only_when_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The (shard, row) layout setting is written in the transaction that adds ciphertext rows, and by
    no enrolment or withdrawal that only fills or erases slots of rows the store already numbers."""
    written: list[str] = []
    set_meta = Transaction.set_meta

    def spy(self: Transaction, name: str, value: object) -> None:
        written.append(name)
        set_meta(self, name, value)

    monkeypatch.setattr(Transaction, "set_meta", spy)
    with open_sharded(tmp_path / "s", ss.ManualClock(), "hybrid", shards=2, replicas=1) as svc:
        shard_of = svc.service._gallery.placement.shard_of
        first, *same_shard = [name for name in (f"p{i}" for i in range(40)) if shard_of(name) == shard_of("p0")][:4]
        chunk = f"{LAYOUT_SETTING}.0"
        ss.enrol_people(svc, [first])  # the shard's first row
        assert written.count(chunk) == 1
        layout = svc.store.meta(chunk)
        written.clear()
        ss.enrol_people(svc, same_shard)  # slots of that row
        assert svc.withdraw(same_shard[0]) is True
        assert not [name for name in written if name.startswith(LAYOUT_SETTING)] and "generation" in written
        assert svc.store.meta(chunk) == layout  # the writes happened, the layout was left
        other = next(name for name in (f"q{i}" for i in range(40)) if shard_of(name) != shard_of("p0"))
        ss.enrol_people(svc, [other])  # the other shard's first row: a new layout
        assert written.count(chunk) == 1 and len(svc.store.meta(chunk)) == len(layout) + 1
        ss.calibrate(svc)
        assert svc.identify(ss.sample(same_shard[1], 1), "entry", 1)[0].subject == same_shard[1]


def test_attested_identification_on_shards_agrees_with_a_single_service(tmp_path: Path) -> None:
    """With a key holder in attested mode, a sharded hybrid service sends the merged code shortlist's
    signed templates in one request, as a single service does: the same answers, and a made-up
    (unsigned) probe is refused on both."""
    from dataclasses import replace

    from fpmatch import CaptureEdge, EdgeKeys, EdgeSigningKey, MatchingService, PinVerifier
    from fpmatch.cluster import ShardedMatchingService
    from fpmatch.errors import AttestationError
    from fpmatch.he import KeyHolder

    signing = EdgeSigningKey.generate()
    base = ss.keyholder()
    capture = CaptureEdge(ss.KEY, ss.DIM, scheme="hybrid", public_context=base.public_context(), signing_key=signing)
    keys = EdgeKeys()
    keys.add(signing.public_bytes, capture.profile.profile_id)
    clock = ss.ManualClock()
    names = [f"p{i}" for i in range(30)]
    templates = np.stack([ss.sample(name, 0) for name in names])
    services = []
    for kind, options in ((ShardedMatchingService, {"shards": 3, "replicas": 1}), (MatchingService, {})):
        holder = KeyHolder.from_bytes(base.to_bytes(), limits=ss.OPEN_LIMITS, edge_keys=keys)
        service = kind.open(tmp_path / kind.__name__, ss.SERVICE_KEY, edge=capture.profile, clock=clock, keyholder=holder,
                            alternative=PinVerifier(cost=2**10, clock=clock), **options)  # fmt: skip
        for name in names:
            ss.grant(service, name, ("entry",))
        service.enrol_many(names, capture.enrolments(templates, names))
        service.calibrate(calibration=capture.calibration(*ss.labelled_set(), ss.TARGET_FMR, max_pairs=40_000))
        services.append(service)
    sharded, single = services
    try:
        assert sharded._attested() and single._attested()
        faces = [ss.sample(name, 1) for name in names[::3]] + [ss.stranger(i) for i in range(4)]
        found = [[[m.subject for m in service.identify(capture.probe(face, purpose="entry", identify=True), "entry", k=3)]
                  for face in faces] for service in services]  # fmt: skip
        assert found[0] == found[1]
        assert [hits[:1] for hits in found[0][:10]] == [[name] for name in names[::3]]
        unsigned = replace(capture.probe(faces[0], purpose="entry", identify=True), attestation=None)
        for service in services:
            with pytest.raises(AttestationError, match="not signed"):
                service.identify(unsigned, "entry")
    finally:
        for service in services:
            service.close()


def test_a_layout_over_many_chunks_and_one_of_earlier_versions_reopen_with_the_same_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout kept in chunks (one row each here) is read back whole; a store holding the one
    layout setting of earlier versions opens as it did and is moved to chunks at its next new row."""
    from fpmatch.cluster import placement

    monkeypatch.setattr(placement, "LAYOUT_CHUNK", 1)
    clock = ss.ManualClock()
    names = [f"p{i}" for i in range(48)]
    probes = _probes(names[::6])
    with open_sharded(tmp_path / "s", clock, "hybrid", shards=2, replicas=1) as svc:
        populate([svc], names)
        expected = answers(svc, probes)
        rows = svc.store.row_count()
        assert rows >= 2 and svc.store.meta(f"{LAYOUT_SETTING}.{rows - 1}") is not None
        entries = svc.service._gallery.layout.entries
        with svc.store.transaction() as tx:  # as an earlier version wrote it
            tx.set_meta(LAYOUT_SETTING, [list(entry) for entry in entries])
            for chunk in range(rows):
                tx.set_meta(f"{LAYOUT_SETTING}.{chunk}", None)
    with open_sharded(tmp_path / "s", clock, "hybrid", replicas=1) as svc:
        assert answers(svc, probes) == expected and svc.check_integrity().ok
        newcomers = [f"new-{i}" for i in range(64)]
        ss.enrol_people(svc, newcomers)
        assert svc.store.row_count() > rows and svc.store.meta(LAYOUT_SETTING) is None
        assert all(svc.store.meta(f"{LAYOUT_SETTING}.{chunk}") for chunk in range(svc.store.row_count()))
        expected = answers(svc, probes)
    with open_sharded(tmp_path / "s", clock, "hybrid", replicas=1) as svc:
        assert svc.service._gallery.layout.entries[:rows] == entries
        assert answers(svc, probes) == expected and svc.check_integrity().ok
        assert svc.identify(ss.sample("new-5", 1), "entry")[0].subject == "new-5"


def test_opening_reads_the_ciphertext_rows_one_shard_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service never holds the whole store's rows at open: each shard's are read when its replicas
    are restored, and the answers are those of the service that wrote them."""
    from fpmatch.store import Store

    clock = ss.ManualClock()
    names = [f"p{i}" for i in range(60)]
    probes = _probes(names[::10])
    with open_sharded(tmp_path / "s", clock, "hybrid", shards=3, replicas=1) as svc:
        populate([svc], names)
        expected = answers(svc, probes)
        layout = svc.service._gallery.layout.entries
    reads: list[list[int] | None] = []
    rows = Store.rows

    def spy(self: Store, numbers=None):  # type: ignore[no-untyped-def]
        reads.append(None if numbers is None else list(numbers))
        return rows(self, numbers)

    monkeypatch.setattr(Store, "rows", spy)
    with open_sharded(tmp_path / "s", clock, "hybrid", replicas=1) as svc:
        assert None not in reads and len(reads) == 3
        assert [{layout[n][0] for n in numbers} for numbers in reads] == [{0}, {1}, {2}]  # one shard each
        assert sorted(n for numbers in reads for n in numbers) == list(range(len(layout)))
        assert answers(svc, probes) == expected


def test_a_damaged_row_is_refused_at_open_and_leaves_no_replica_running(tmp_path: Path, ray_runtime) -> None:  # noqa: F811
    from fpmatch.cluster.nodes import running_replicas
    from fpmatch.errors import StoreIntegrityError

    clock = ss.ManualClock()
    with open_sharded(tmp_path / "s", clock, "hybrid", shards=2, replicas=1) as svc:
        populate([svc], [f"p{i}" for i in range(40)])
        last = svc.store.row_count() - 1
    with ss.raw(tmp_path / "s") as db:
        (data,) = db.execute("SELECT data FROM he_rows WHERE row = ?", (last,)).fetchone()
        db.execute("UPDATE he_rows SET data = ? WHERE row = ?", (data[:-1] + bytes([data[-1] ^ 1]), last))
    before = len(running_replicas(ray_runtime))
    with pytest.raises(StoreIntegrityError, match=f"ciphertext row {last}"):
        open_sharded(tmp_path / "s", clock, "hybrid", replicas=2)
    _wait_for(lambda: len(running_replicas(ray_runtime)) == before)
