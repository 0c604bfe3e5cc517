"""The ``hybrid`` scheme: hash-code shortlist, exact encrypted re-scoring, withdrawal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tenseal", reason="the he and hybrid schemes need TenSEAL (pip install tenseal)")

from fpmatch import CancellableHash, HashKey, IVFIndex  # noqa: E402
from fpmatch.errors import (  # noqa: E402
    AuthenticationError,
    IdConflictError,
    InvalidInputError,
    UnknownSubjectError,
)
from fpmatch.he import HybridGallery, KeyHolder, RateLimit  # noqa: E402
from fpmatch.he.audit import SecretKeyAudit  # noqa: E402
from fpmatch.synthetic import make_faces  # noqa: E402

TOLERANCE = 2e-4
N = 1500
DIM = 512


def unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    holder = KeyHolder(limits=RateLimit(requests_per_second=1e6, burst=1_000_000))
    audit = SecretKeyAudit(holder.save(tmp_path_factory.mktemp("keys") / "he.key"))
    faces = make_faces(N, 2, profile="centred", seed=11)
    templates, probes = faces.embeddings[0::2], faces.embeddings[1::2]
    scheme = CancellableHash(HashKey(bytes(range(32))), DIM, 1024)
    gallery = HybridGallery(scheme, holder.public_context(), shortlist=16)
    names = [f"h{i:04d}" for i in range(N)]
    gallery.enrol(names[:1001], templates[:1001])  # ends mid-row: the next batch reopens it
    gallery.enrol(names[1001:], templates[1001:])
    return {
        "holder": holder,
        "audit": audit,
        "gallery": gallery,
        "templates": templates,
        "probes": probes,
        "names": names,
    }


def test_layout(world: dict) -> None:
    gallery = world["gallery"]
    assert gallery.group == 8  # 4096 coefficients, 512-D templates
    assert gallery.rows == -(-N // 8)
    assert gallery.bytes_per_template == 2 * 4096 * 6 // 8 + 128  # 6,144 ciphertext bytes (6 a value) and the code


def test_rescored_scores_match_plain_cosine(world: dict) -> None:
    gallery, audit = world["gallery"], world["audit"]
    rng = np.random.default_rng(0)
    worst = 0.0
    for i in rng.choice(N, 10, replace=False).tolist():
        probe = world["probes"][i]
        chosen = rng.choice(N, 40, replace=False)
        request = gallery.scores_for([world["names"][j] for j in chosen], probe)
        plain = unit(world["templates"][chosen]) @ unit(probe)
        worst = max(worst, float(np.abs(audit.scores(request) - plain).max()))
    assert worst < TOLERANCE


def test_identification_decisions_equal_plain_cosine_on_the_shortlist(world: dict) -> None:
    gallery, holder = world["gallery"], world["holder"]
    plain_gallery = unit(world["templates"])
    threshold = 0.35
    found = 0
    for i in range(0, N, 50):
        probe = world["probes"][i]
        shortlist = gallery.shortlist_for(probe)
        plain = plain_gallery[[world["names"].index(s) for s in shortlist]] @ unit(probe)
        order = np.argsort(-plain, kind="stable")
        expected = [shortlist[j] for j in order[:3] if plain[j] >= threshold]
        got = [m.subject for m in gallery.identify(probe, holder, threshold, 3, caller="t")]
        if np.abs(plain - threshold).min() > TOLERANCE:
            assert got == expected
        found += got[:1] == [world["names"][i]]
    assert found >= 28  # the mated subject is shortlisted and accepted for almost every probe


def test_verify(world: dict) -> None:
    gallery, holder = world["gallery"], world["holder"]
    assert gallery.verify("h0003", world["probes"][3], holder, 0.35, caller="t").verified
    assert not gallery.verify("h0004", world["probes"][3], holder, 0.35, caller="t").verified


def test_withdrawal_removes_code_and_plaintext(world: dict) -> None:
    holder, audit = world["holder"], world["audit"]
    scheme = CancellableHash(HashKey(bytes(range(32))), DIM, 1024)
    gallery = HybridGallery(scheme, holder.public_context(), shortlist=8)
    templates = world["templates"][:50]
    gallery.enrol([f"w{i}" for i in range(50)], templates)
    target = 17
    wanted = unit(templates[target])
    scale = audit.template_scale

    def pieces() -> np.ndarray:
        """Every d-coefficient window of every ciphertext kept (stride d), decrypted."""
        plain = np.concatenate([audit.decrypt(c0, c1) for c0, c1 in gallery.ciphertexts()])
        return plain.reshape(-1, DIM).astype(np.float64) / scale

    assert np.linalg.norm(pieces() - wanted, axis=1).min() < 1e-4
    gallery.withdraw(f"w{target}")
    plain = np.concatenate([audit.decrypt(c0, c1) for c0, c1 in gallery.ciphertexts()]).astype(np.float64) / scale
    # No window at any offset of any ciphertext decrypts to the template.
    windows = np.lib.stride_tricks.sliding_window_view(plain, DIM)
    assert np.linalg.norm(windows - wanted, axis=1).min() > 0.3
    assert f"w{target}" not in gallery and len(gallery.index) == 49
    assert f"w{target}" not in gallery.shortlist_for(world["probes"][target])
    assert all(m.subject != f"w{target}" for m in gallery.identify(templates[target], holder, 0.3, caller="t"))
    with pytest.raises(UnknownSubjectError):
        gallery.withdraw(f"w{target}")


def test_bad_inputs(world: dict) -> None:
    gallery, holder = world["gallery"], world["holder"]
    with pytest.raises(IdConflictError):
        gallery.enrol("h0000", world["templates"][0])
    with pytest.raises(UnknownSubjectError):
        gallery.verify("nobody", world["probes"][0], holder, 0.5, caller="t")
    with pytest.raises(InvalidInputError):
        gallery.verify("h0000", world["probes"][:2], holder, 0.5, caller="t")
    with pytest.raises(InvalidInputError):
        HybridGallery(gallery.scheme, holder.public_context(), shortlist=0)
    with pytest.raises(InvalidInputError):
        HybridGallery(gallery.scheme, holder.public_context(), index="annoy")
    empty = HybridGallery(gallery.scheme, holder.public_context())
    assert empty.identify(world["probes"][0], holder, 0.5, caller="t") == []


def test_save_and_load(world: dict, tmp_path: Path) -> None:
    gallery, holder = world["gallery"], world["holder"]
    path = tmp_path / "hybrid.fpm"
    gallery.save(path)
    loaded = HybridGallery.load(path, gallery.scheme.key)
    assert sorted(loaded.subjects()) == sorted(gallery.subjects())
    probe = world["probes"][42]
    assert loaded.shortlist_for(probe) == gallery.shortlist_for(probe)
    a, b = loaded.scores_for(["h0042"], probe), gallery.scores_for(["h0042"], probe)
    assert np.array_equal(a.a, b.a) and np.array_equal(a.b, b.b)
    assert loaded.verify("h0042", probe, holder, 0.35, caller="t").verified
    with pytest.raises(AuthenticationError):
        HybridGallery.load(path, HashKey(bytes(32)))  # another key: the tag fails first
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(AuthenticationError):
        HybridGallery.load(path, gallery.scheme.key)


def test_save_and_load_keeps_the_offset_scheme(world: dict, tmp_path: Path) -> None:
    holder = world["holder"]
    templates = world["templates"][:40]
    u = np.zeros(DIM, dtype=np.float32)
    u[0] = 1.0
    scheme = CancellableHash(HashKey(bytes(range(32))), DIM, 1024, offset=u, offset_removal=0.5)
    gallery = HybridGallery(scheme, holder.public_context(), shortlist=4)
    gallery.enrol([f"o{i}" for i in range(40)], templates)
    path = tmp_path / "offset.fpm"
    gallery.save(path)
    loaded = HybridGallery.load(path, scheme.key)
    assert loaded.scheme.offset_removal == 0.5
    np.testing.assert_array_equal(loaded.scheme.offset, u)
    probe = world["probes"][3]
    assert loaded.shortlist_for(probe) == gallery.shortlist_for(probe)


def test_ivf_shortlist(world: dict) -> None:
    """An IVF hash stage learns its lists from the first batch and shortlists like the flat one."""
    holder = world["holder"]
    scheme = world["gallery"].scheme
    ivf = HybridGallery(scheme, holder.public_context(), index=IVFIndex(scheme.bits, nlist=16, nprobe=8), shortlist=8)
    with pytest.raises(InvalidInputError):  # fewer codes than lists: nothing is stored
        ivf.enrol([f"v{i}" for i in range(10)], world["templates"][:10])
    assert len(ivf) == 0
    ivf.enrol([f"v{i}" for i in range(300)], world["templates"][:300])
    assert ivf.index.is_trained
    hits = [ivf.shortlist_for(world["probes"][i])[:1] == [f"v{i}"] for i in range(100)]
    assert np.mean(hits) >= 0.95
    assert ivf.verify("v7", world["probes"][7], holder, 0.35, caller="t").verified
