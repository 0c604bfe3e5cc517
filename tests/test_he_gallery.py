"""The ``he`` scheme's packed gallery: scores equal plain cosine within tolerance,
batched enrolment, withdrawal that leaves nothing decryptable even with the
secret key, and files that hold nothing able to decrypt."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tenseal", reason="the he and hybrid schemes need TenSEAL (pip install tenseal)")

from fpmatch.errors import (  # noqa: E402
    AuthenticationError,
    DtypeError,
    IdConflictError,
    InvalidInputError,
    KeyMismatchError,
    UnknownSubjectError,
)
from fpmatch.he import EncryptedGallery, KeyHolder, PublicContext, RateLimit  # noqa: E402
from fpmatch.he.audit import SecretKeyAudit  # noqa: E402
from fpmatch.he.keyholder import _KEY_MAGIC  # noqa: E402
from fpmatch.synthetic import make_faces  # noqa: E402

#: |encrypted score - plain cosine| stays below this (measured: about 2e-5 typical).
TOLERANCE = 2e-4
DIM = 128
N = 600


def unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    holder = KeyHolder(limits=RateLimit(requests_per_second=1e6, burst=1_000_000))
    key_file = holder.save(tmp_path_factory.mktemp("keys") / "he.key")
    faces = make_faces(N, 2, profile="offset", seed=3)  # 128-D, dlib-like
    templates = faces.embeddings[0::2]
    probes = faces.embeddings[1::2]
    gallery = EncryptedGallery(holder.public_context(), DIM)
    names = [f"p{i:04d}" for i in range(N)]
    gallery.enrol(names[:250], templates[:250])  # two batches: the second fills the open block
    gallery.enrol(names[250:], templates[250:])
    return {
        "holder": holder,
        "audit": SecretKeyAudit(key_file),
        "key_file": key_file,
        "gallery": gallery,
        "templates": templates,
        "probes": probes,
        "names": names,
    }


def test_scores_match_plain_cosine(world: dict) -> None:
    gallery, audit = world["gallery"], world["audit"]
    plain_gallery = unit(world["templates"])
    errors = []
    for i in range(0, N, 60):
        probe = world["probes"][i]
        request, slots = gallery.identification_request(probe)
        assert [gallery.subject_at(slot) for slot in slots] == world["names"]
        encrypted = audit.scores(request)
        errors.append(np.abs(encrypted - plain_gallery @ unit(probe)).max())
        one = audit.scores(gallery.verification_request(world["names"][i], probe))
        errors.append(abs(one[0] - float(plain_gallery[i] @ unit(probe))))
    assert max(errors) < TOLERANCE


def test_decisions_follow_plain_cosine(world: dict) -> None:
    gallery, holder = world["gallery"], world["holder"]
    plain = unit(world["templates"]) @ unit(world["probes"][:20]).T
    threshold = 0.93
    for i in range(20):
        probe = world["probes"][i]
        for j in (i, (i + 1) % N):
            expected = plain[j, i] >= threshold
            if abs(plain[j, i] - threshold) > TOLERANCE:
                assert gallery.verify(world["names"][j], probe, holder, threshold, caller="t").verified == expected
        expected = [world["names"][j] for j in np.argsort(-plain[:, i])[:3] if plain[j, i] >= threshold]
        got = [m.subject for m in gallery.identify(probe, holder, threshold, 3, caller="t")]
        margins = np.abs(np.sort(plain[:, i])[::-1][:4] - threshold)
        if margins.min() > TOLERANCE:
            assert got == expected


def test_layout_and_sizes(world: dict) -> None:
    gallery = world["gallery"]
    assert gallery.block_size == 4096 and gallery.blocks.count == 1
    assert gallery.blocks.refreshes == [1]  # the second batch filled columns known to be empty
    assert gallery.bytes_per_template == 2 * DIM * 6  # c0 and c1 values packed in 6 bytes
    assert gallery.stored_bytes() == DIM * 2 * 4096 * 6
    assert len(gallery) == N and "p0001" in gallery and "nobody" not in gallery


def test_threaded_identification_is_the_same(world: dict) -> None:
    holder = world["holder"]
    public = PublicContext(holder.public_context())
    small = EncryptedGallery(public, 16, n_threads=2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9000, 16)).astype(np.float32)  # three blocks
    small.enrol([f"x{i}" for i in range(9000)], x)
    probe = x[8500] + 0.01
    one, _ = small.identification_request(probe)
    small.n_threads = 1
    two, _ = small.identification_request(probe)
    assert np.array_equal(one.a, two.a) and np.array_equal(one.b, two.b) and np.array_equal(one.index, two.index)
    assert [m.subject for m in small.identify(probe, holder, 0.9, 1, caller="t")] == ["x8500"]


def test_bad_inputs(world: dict) -> None:
    gallery, holder = world["gallery"], world["holder"]
    probe = world["probes"][0]
    with pytest.raises(IdConflictError):
        gallery.enrol("p0000", world["templates"][0])
    with pytest.raises(UnknownSubjectError):
        gallery.verify("nobody", probe, holder, 0.5, caller="t")
    with pytest.raises(DtypeError):
        gallery.verify("p0000", probe.astype(np.float64), holder, 0.5, caller="t")
    with pytest.raises(InvalidInputError):
        gallery.verify("p0000", np.zeros(DIM, dtype=np.float32), holder, 0.5, caller="t")
    with pytest.raises(InvalidInputError):
        gallery.verify("p0000", np.full(DIM, np.nan, dtype=np.float32), holder, 0.5, caller="t")
    with pytest.raises(InvalidInputError):
        gallery.verify("p0000", probe[:10], holder, 0.5, caller="t")
    with pytest.raises(InvalidInputError):
        gallery.verify("p0000", probe, holder, 2.0, caller="t")
    with pytest.raises(InvalidInputError):
        EncryptedGallery(holder.public_context(), 5000)
    before = len(gallery)
    with pytest.raises(InvalidInputError):
        gallery.enrol(["a", "b"], world["templates"][:3])
    assert len(gallery) == before


def test_withdrawal_leaves_nothing_decryptable(world: dict) -> None:
    holder, audit = world["holder"], world["audit"]
    public = PublicContext(holder.public_context())
    gallery = EncryptedGallery(public, DIM)
    templates = world["templates"][:300]
    gallery.enrol([f"w{i}" for i in range(300)], templates)
    scale = audit.template_scale
    target = 123
    wanted = unit(templates[target])

    def columns() -> np.ndarray:
        """Every coefficient of every ciphertext the gallery keeps, per slot: (slots, dim)."""
        plain = np.stack([audit.decrypt(c0, c1) for c0, c1 in gallery.ciphertexts()])
        return plain.T.astype(np.float64) / scale

    before = columns()
    assert np.abs(before[target] - wanted).max() < 1e-4  # the key recovers it while enrolled
    gallery.withdraw(f"w{target}")
    after = columns()
    distance = np.linalg.norm(after - wanted, axis=1)
    assert distance.min() > 0.3  # no slot of any ciphertext decrypts to the template
    assert np.abs(after[target]).max() > 100  # its slot is now noise, not a template
    others = np.delete(np.arange(300), target)
    assert np.abs(after[others] - unit(templates[others])).max() < 1e-4
    assert f"w{target}" not in gallery
    with pytest.raises(UnknownSubjectError):
        gallery.verify(f"w{target}", templates[target], holder, 0.5, caller="t")
    request, slots = gallery.identification_request(templates[target])
    assert len(slots) == 299 and f"w{target}" not in {gallery.subject_at(slot) for slot in slots}
    with pytest.raises(UnknownSubjectError):
        gallery.subject_at(target)
    assert gallery.identify(templates[target], holder, 0.999, caller="t") == []
    # A later batch fills an empty slot; the withdrawn slot stays dead.
    gallery.enrol(["late"], world["templates"][400])
    assert np.linalg.norm(columns() - wanted, axis=1).min() > 0.3
    assert gallery.verify("late", world["probes"][400], holder, 0.9, caller="t").verified


def test_saved_gallery_cannot_decrypt(world: dict, tmp_path: Path) -> None:
    gallery, holder = world["gallery"], world["holder"]
    path = tmp_path / "gallery.he"
    gallery.save(path)
    data = path.read_bytes()
    # The only key material written is the public context, and it cannot decrypt.
    meta_len, public_len = struct.unpack_from("<QQ", data, 8)
    start = 8 + 16 + meta_len
    public = PublicContext(data[start : start + public_len])  # refuses any context carrying a secret key
    assert not public.tenseal_context.has_secret_key() and public.key_id == holder.key_id
    secret_ntt = holder._s_hat.astype("<i8").tobytes()
    for chunk in range(0, 4096 * 8, 1024):
        assert secret_ntt[chunk : chunk + 64] not in data
    assert _KEY_MAGIC not in data and world["key_file"].read_bytes()[-4096:] not in data
    loaded = EncryptedGallery.load(path)
    assert loaded.subjects() == gallery.subjects()
    probe = world["probes"][7]
    assert np.array_equal(
        loaded.identification_request(probe)[0].to_bytes(), gallery.identification_request(probe)[0].to_bytes()
    )
    assert loaded.verify("p0007", probe, holder, 0.9, caller="t").verified


def test_saved_gallery_integrity(world: dict, tmp_path: Path) -> None:
    gallery = world["gallery"]
    path = tmp_path / "gallery.he"
    key = b"k" * 32
    gallery.save(path, mac_key=key)
    assert EncryptedGallery.load(path, mac_key=key).subjects() == gallery.subjects()
    with pytest.raises(AuthenticationError):
        EncryptedGallery.load(path)  # saved with a MAC, read as checksum
    with pytest.raises(AuthenticationError):
        EncryptedGallery.load(path, mac_key=b"x" * 32)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(AuthenticationError):
        EncryptedGallery.load(path, mac_key=key)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(AuthenticationError):
        EncryptedGallery.load(path, mac_key=key)


def test_gallery_under_another_key_is_refused(world: dict) -> None:
    other = KeyHolder()
    gallery = EncryptedGallery(other.public_context(), DIM)
    gallery.enrol(["a"], world["templates"][0])
    with pytest.raises(KeyMismatchError):
        gallery.verify("a", world["probes"][0], world["holder"], 0.5, caller="t")


def test_the_gallery_is_the_he_scheme_gallery_and_saves_no_empty_column(world: dict, tmp_path: Path) -> None:
    from fpmatch.galleries import ProtectedGallery
    from fpmatch.galleries.encrypted import EncryptedSchemeGallery

    holder = world["holder"]
    gallery = EncryptedGallery(holder.public_context(), DIM)
    assert isinstance(gallery, EncryptedSchemeGallery) and isinstance(gallery, ProtectedGallery)
    gallery.enrol(["a", "b", "c"], world["templates"][:3])
    gallery.withdraw("b")
    path = tmp_path / "g.he"
    gallery.save(path)
    data = path.read_bytes()
    meta_len, public_len = struct.unpack_from("<QQ", data, 8)
    # c1 halves of one block and the two live subjects' columns: no empty or withdrawn column.
    assert len(data) == 8 + 16 + meta_len + public_len + DIM * 4096 * 6 + 2 * DIM * 6 + 32  # 6 bytes a value
    loaded = EncryptedGallery.load(path)
    assert loaded.subjects() == ["a", "c"]
    assert loaded.verify("c", world["probes"][2], holder, 0.9, caller="t").verified
    loaded.enrol(["d"], world["templates"][3])  # its empty columns are unknown after loading: a new block
    assert loaded.location("d") == (1, 0)
    assert [m.subject for m in loaded.identify(world["probes"][3], holder, 0.9, caller="t")] == ["d"]


def test_a_file_of_the_earlier_format_still_loads(world: dict, tmp_path: Path) -> None:
    import hashlib
    import json

    holder = world["holder"]
    gallery = EncryptedGallery(holder.public_context(), DIM)
    gallery.enrol(["a", "b", "c"], world["templates"][:3])
    gallery.withdraw("b")
    ring = gallery.context.ring
    # The earlier format kept whole blocks (every column) and a name per filled slot.
    blocks = [np.stack([np.concatenate([c0, c1]) for c0, c1 in gallery.ciphertexts()])]
    meta = json.dumps(
        {"format": 1, "dim": DIM, "key_id": gallery.key_id, "n": ring.n, "q": ring.q,
         "blocks": [{"names": ["a", None, "c"], "refreshes": 1}]}
    ).encode()
    public = gallery.context.to_bytes()
    body = b"FPHEGAL1" + struct.pack("<QQ", len(meta), len(public)) + meta + public + blocks[0].astype("<i8").tobytes()
    path = tmp_path / "old.he"
    path.write_bytes(body + hashlib.sha256(body).digest())
    loaded = EncryptedGallery.load(path)
    assert loaded.subjects() == ["a", "c"] and loaded.location("c") == (0, 2)
    probe = world["probes"][0]
    assert np.array_equal(
        loaded.identification_request(probe)[0].to_bytes(), gallery.identification_request(probe)[0].to_bytes()
    )
    doubled = body.replace(b'"c"]', b'"a"]')
    path.write_bytes(doubled + hashlib.sha256(doubled).digest())
    with pytest.raises(AuthenticationError, match="twice"):
        EncryptedGallery.load(path)


def _reframe(data: bytes, magic: bytes, sections: bytes, meta: dict | None = None) -> bytes:
    """A gallery file with its arrays replaced by ``sections`` (and its header by ``meta``), checksummed."""
    import hashlib
    import json

    meta_len, public_len = struct.unpack_from("<QQ", data, 8)
    start = 8 + 16
    old_meta = json.loads(data[start : start + meta_len])
    header = json.dumps(meta if meta is not None else old_meta).encode()
    public = data[start + meta_len : start + meta_len + public_len]
    body = magic + struct.pack("<QQ", len(header), len(public)) + header + public + sections
    return body + hashlib.sha256(body).digest()


def test_a_file_of_format_2_int64_values_still_loads(world: dict, tmp_path: Path) -> None:
    from fpmatch.he._packing import unpack

    holder = world["holder"]
    gallery = EncryptedGallery(holder.public_context(), DIM)
    gallery.enrol(["a", "b", "c"], world["templates"][:3])
    gallery.withdraw("b")
    q = gallery.context.ring.q
    path = tmp_path / "g.he"
    gallery.save(path)
    # Format 2: the same sections, every value int64 (centred) instead of 6 packed bytes.
    c1 = unpack(gallery.blocks.c1_bytes(0), q).astype("<i8").tobytes()
    columns = b"".join(unpack(gallery.blocks.column(gallery._slot[gallery.id_of(s)]), q).astype("<i8").tobytes() for s in ("a", "c"))
    old = tmp_path / "v2.he"
    old.write_bytes(_reframe(path.read_bytes(), b"FPHEGAL2", c1 + columns))
    loaded = EncryptedGallery.load(old)
    assert loaded.subjects() == ["a", "c"]
    probe = world["probes"][0]
    assert loaded.identification_request(probe)[0].to_bytes() == gallery.identification_request(probe)[0].to_bytes()
    assert loaded.blocks.column(loaded._slot[loaded.id_of("c")]) == gallery.blocks.column(gallery._slot[gallery.id_of("c")])


def test_truncated_or_out_of_range_packed_data_is_refused(world: dict, tmp_path: Path) -> None:
    holder = world["holder"]
    gallery = EncryptedGallery(holder.public_context(), DIM)
    gallery.enrol(["a"], world["templates"][:1])
    path = tmp_path / "g.he"
    gallery.save(path)
    data = path.read_bytes()
    meta_len, public_len = struct.unpack_from("<QQ", data, 8)
    arrays = data[8 + 16 + meta_len + public_len : -32]
    assert len(arrays) == DIM * 4096 * 6 + DIM * 6
    for cut in (1, 6, 5 * DIM):  # part of a value, one value, most of the column
        path.write_bytes(_reframe(data, b"FPHEGAL3", arrays[:-cut]))
        with pytest.raises(AuthenticationError):
            EncryptedGallery.load(path)
    q = gallery.context.ring.q
    too_big = arrays[:-6] + q.to_bytes(6, "little")  # a stored value above q - 1
    path.write_bytes(_reframe(data, b"FPHEGAL3", too_big))
    with pytest.raises(AuthenticationError, match="out of range"):
        EncryptedGallery.load(path)


def test_erasure_writes_the_packed_zero(world: dict) -> None:
    holder = world["holder"]
    gallery = EncryptedGallery(holder.public_context(), DIM)
    gallery.enrol(["a", "b"], world["templates"][:2])
    slot = gallery._slot[gallery.id_of("a")]
    gallery.withdraw("a")
    half = gallery.context.ring.q // 2
    erased = gallery.blocks._columns(0)[:, slot]
    assert erased.tobytes() == half.to_bytes(6, "little") * DIM  # zero is stored as (q - 1) / 2
    c0, _ = gallery.blocks.ciphertexts()[0]
    assert c0[slot] == 0


def test_rows_of_the_int64_form_agree_with_the_packed_gallery(world: dict) -> None:
    # A store written before the packed layout holds int64 rows and columns: loading packs them,
    # and the integrity comparison sees the same values, not different bytes.
    from fpmatch.galleries.base import StoredTemplate
    from fpmatch.he._packing import int64_form, same_values

    holder = world["holder"]
    gallery = EncryptedGallery(holder.public_context(), DIM)
    gallery.enrol(["a", "b"], world["templates"][:2])
    q = gallery.context.ring.q
    rows = [(int64_form(gallery.blocks.c1_bytes(0), q), gallery.blocks.used[0], gallery.blocks.refreshes[0])]
    stored = {
        name: StoredTemplate(name, gallery.id_of(name), None, slot, int64_form(gallery.blocks.column(slot), q))
        for name, slot in ((s, gallery._slot[gallery.id_of(s)]) for s in ("a", "b"))
    }
    assert gallery.problems(stored, rows) == []
    loaded = EncryptedGallery(holder.public_context(), DIM)
    loaded.restore(list(stored.values()), rows, None)
    assert loaded.blocks.c1_bytes(0) == gallery.blocks.c1_bytes(0)
    changed = bytearray(rows[0][0])
    changed[3] ^= 1
    assert gallery.problems(stored, [(bytes(changed), *rows[0][1:])]) == ["ciphertext blocks in memory differ from the database"]
    column = gallery.blocks.column(0)
    assert same_values(column, column, q) and not same_values(column[:-6], column, q)
