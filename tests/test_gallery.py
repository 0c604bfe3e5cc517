"""Gallery: enrolment, 1:1 verification, 1:N identification, calibration,
persistence and renewability, on synthetic 512-D templates."""

from __future__ import annotations

import math

import numpy as np

import fpmatch
import pytest

from fpmatch import (
    AuthenticationError,
    CancellableHash,
    Candidate,
    Gallery,
    HashKey,
    HNSWIndex,
    IdConflictError,
    InvalidInputError,
    KeyFileError,
    KeyMismatchError,
    NotCalibratedError,
    UnknownSubjectError,
    VerifyResult,
)
from fpmatch.codes import hamming
from fpmatch.synthetic import FaceGenerator

DIM = 512
N_SUBJECTS = 3000
N_STRANGERS = 5000
TARGET_FMR = 1e-2
KEY_A = HashKey(bytes(range(32)))
KEY_B = HashKey(bytes(range(200, 232)))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Faces:
    """Identities on the unit sphere; each sample is normalise(0.8 z + 0.6 n)."""

    def __init__(self, n: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.z = unit(self.rng.standard_normal((n, DIM)))

    def sample(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        z = self.z[idx]
        noise = unit(self.rng.standard_normal(z.shape))
        return unit(0.8 * z + 0.6 * noise).astype(np.float32)


def names_for(n: int, prefix: str = "subject") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


@pytest.fixture(scope="module")
def faces() -> dict:
    people = Faces(N_SUBJECTS, seed=1)
    strangers = Faces(N_STRANGERS, seed=2)
    return {
        "names": names_for(N_SUBJECTS),
        "enrol": people.sample(),
        "genuine": people.sample(),
        "genuine2": people.sample(),
        "strangers": strangers.sample(),
    }


@pytest.fixture(scope="module")
def gallery(faces: dict) -> Gallery:
    g = Gallery(CancellableHash(KEY_A, DIM), target_fmr=TARGET_FMR)
    g.enrol(faces["names"], faces["enrol"])
    g.calibrate(max_pairs=300_000)
    return g


IVF_NLIST = 32


def small_ivf() -> fpmatch.IVFIndex:
    """An untrained IVF index small enough for these galleries (the default nlist is 1024)."""
    return fpmatch.IVFIndex(1024, nlist=IVF_NLIST, nprobe=IVF_NLIST // 2)


def small_gallery(faces: dict, n: int = 400, index: str = "flat", key: HashKey = KEY_A) -> Gallery:
    """``index="ivf"`` means :func:`small_ivf`, trained by the gallery on its first enrolment."""
    chosen = small_ivf() if index == "ivf" else index
    g = Gallery(CancellableHash(key, DIM), index=chosen, target_fmr=TARGET_FMR)
    g.enrol(faces["names"][:n], faces["enrol"][:n])
    return g


# --------------------------------------------------------------------------- decisions


def test_enrolled_gallery_state(gallery: Gallery, faces: dict) -> None:
    assert len(gallery) == N_SUBJECTS == len(gallery.index)
    assert gallery.subjects() == faces["names"]
    assert faces["names"][17] in gallery and "nobody" not in gallery
    assert gallery.target_fmr == TARGET_FMR
    assert gallery.threshold is not None and -1.0 < gallery.threshold < 1.0
    assert gallery.scheme.bits == 1024


def test_genuine_accepted_and_impostors_at_target_fmr(gallery: Gallery, faces: dict) -> None:
    names = faces["names"]
    genuine = [gallery.verify(names[i], faces["genuine"][i]) for i in range(N_SUBJECTS)]
    tar = np.mean([r.verified for r in genuine])
    assert tar >= 0.98
    impostor = [gallery.verify(names[i % N_SUBJECTS], faces["strangers"][i]) for i in range(N_STRANGERS)]
    fmr = np.mean([r.verified for r in impostor])
    assert fmr <= 2 * TARGET_FMR
    assert fmr >= TARGET_FMR / 5  # the calibrated threshold is not needlessly strict either
    for r in genuine[:200] + impostor[:200]:
        assert isinstance(r, VerifyResult)
        assert r.threshold == gallery.threshold
        assert r.verified == (r.score >= r.threshold)
        assert r.score == 1.0 - 2.0 * r.distance
    # Impostor and genuine scores are on the cosine scale: strangers near 0, mates near 0.64.
    assert abs(np.mean([r.score for r in impostor])) < 0.02
    assert 0.5 < np.mean([r.score for r in genuine]) < 0.75


def test_verify_result_distance_is_the_probes_weighted_distance(gallery: Gallery, faces: dict) -> None:
    name, probe = faces["names"][5], faces["genuine"][5]
    r = gallery.verify(name, probe)
    assert r.subject == name
    assert isinstance(r.verified, bool) and isinstance(r.distance, float)
    stored = gallery.scheme.protect(faces["enrol"][5])
    code, reliability = gallery.scheme.protect_with_reliability(probe)
    mismatch = np.unpackbits(code ^ stored, bitorder="little").astype(np.float64)
    assert r.distance == pytest.approx(float(mismatch @ reliability[0]), rel=1e-5)
    # Bits that disagree cost their reliability, so the weighted share differs from the plain one.
    assert r.distance != pytest.approx(int(hamming(code, stored)[0]) / gallery.scheme.bits, rel=1e-3)
    same = gallery.verify(name, faces["enrol"][5])
    assert same.distance == 0 and same.score == 1.0 and same.verified


def test_verify_and_identify_give_the_same_score(gallery: Gallery, faces: dict) -> None:
    for i in range(20):
        best = gallery.identify(faces["genuine"][i], k=1, threshold=-1.0)[0]
        again = gallery.verify(best.subject, faces["genuine"][i], threshold=-1.0)
        assert (again.score, again.distance) == (best.score, best.distance)


def test_weighted_ranking_beats_hamming_on_narrow_cone_data() -> None:
    # dlib-like templates: every face near one direction; plain cosine's top-1 is the reference.
    gen = FaceGenerator("offset", seed=4)
    people = gen.identities(20_000)
    enrolled, probes = gen.samples(people), gen.samples(people[:500])
    offset = fpmatch.estimate_offset(gen.samples(gen.identities(1000)))
    scheme = CancellableHash(KEY_A, enrolled.shape[1], 256, offset=offset)  # short codes: a clear gap
    index = fpmatch.FlatIndex(scheme.bits)
    index.add(scheme.protect(enrolled), np.arange(len(enrolled), dtype=np.int64))
    top1 = (probes @ enrolled.T).argmax(axis=1)
    codes, reliability = scheme.protect_with_reliability(probes)
    hamming_top = index.search(codes, 1).labels[:, 0]
    weighted_top = index.search_weighted(codes, reliability, 1, shortlist=256).labels[:, 0]
    assert np.mean(weighted_top == top1) > np.mean(hamming_top == top1) + 0.04


def test_identify_returns_right_subject_first(gallery: Gallery, faces: dict) -> None:
    names = faces["names"]
    found = gallery.identify_many(faces["genuine"][:1000], k=3)
    assert len(found) == 1000
    rank1 = np.mean([bool(c) and c[0].subject == names[i] for i, c in enumerate(found)])
    assert rank1 >= 0.98
    for candidates in found[:100]:
        assert len(candidates) <= 3
        assert [c.rank for c in candidates] == list(range(1, len(candidates) + 1))
        assert [c.distance for c in candidates] == sorted(c.distance for c in candidates)
        for c in candidates:
            assert isinstance(c, Candidate)
            assert c.score >= gallery.threshold and c.score == 1.0 - 2.0 * c.distance
    single = gallery.identify(faces["genuine"][7], k=3)
    assert single == found[7]


def test_identify_with_explicit_threshold(gallery: Gallery, faces: dict) -> None:
    names = faces["names"]
    # A threshold of 0.4 lies far between impostor (~0) and genuine (~0.64) scores.
    found = gallery.identify_many(faces["genuine"][:300], k=5, threshold=0.4)
    assert all(len(c) == 1 and c[0].subject == names[i] for i, c in enumerate(found))
    strangers = gallery.identify_many(faces["strangers"][:300], k=5, threshold=0.4)
    assert all(c == [] for c in strangers)
    # threshold=-1 accepts everything: k candidates always.
    assert all(len(c) == 5 for c in gallery.identify_many(faces["strangers"][:20], k=5, threshold=-1.0))
    with pytest.raises(InvalidInputError):
        gallery.identify(faces["genuine"][0], k=0)


def test_explicit_threshold_zero_is_honoured(gallery: Gallery, faces: dict) -> None:
    names = faces["names"]
    calibrated = gallery.threshold
    assert calibrated > 0.0
    # Find impostor comparisons whose score lies in [0, calibrated): accepted at 0.0 only.
    between = []
    for i in range(400):
        r = gallery.verify(names[i], faces["strangers"][i])
        if 0.0 <= r.score < calibrated:
            between.append(i)
    assert len(between) > 20
    for i in between[:20]:
        at_zero = gallery.verify(names[i], faces["strangers"][i], threshold=0.0)
        assert at_zero.threshold == 0.0
        assert at_zero.verified is True
        assert gallery.verify(names[i], faces["strangers"][i]).verified is False
    # Also for identification and on a gallery that has never been calibrated.
    fresh = small_gallery(faces, n=30)
    assert fresh.threshold is None
    r = fresh.verify(names[0], faces["strangers"][0], threshold=0.0)
    assert r.threshold == 0.0 and r.verified == (r.score >= 0.0)
    assert fresh.identify(faces["genuine"][0], k=1, threshold=0.0)[0].subject == names[0]
    assert fresh.threshold is None  # an explicit threshold does not calibrate
    at_one = gallery.verify(names[0], faces["genuine"][0], threshold=1.0)
    assert at_one.verified is False and at_one.threshold == 1.0
    with pytest.raises(InvalidInputError):
        gallery.verify(names[0], faces["genuine"][0], threshold=1.5)


def test_verified_matches_score_vs_threshold_at_the_boundary(gallery: Gallery, faces: dict) -> None:
    name, probe = faces["names"][3], faces["genuine"][3]
    exact = gallery.verify(name, probe)
    for threshold in (exact.score, float(np.nextafter(exact.score, 2.0))):
        r = gallery.verify(name, probe, threshold=threshold)
        assert r.verified == (r.score >= r.threshold), (r.score, r.threshold)


def test_verify_input_checks(gallery: Gallery, faces: dict) -> None:
    with pytest.raises(InvalidInputError):
        gallery.verify(faces["names"][0], faces["genuine"][:2])  # two probes
    with pytest.raises(InvalidInputError):
        gallery.verify(faces["names"][0], faces["genuine"][0, :100])
    with pytest.raises(TypeError):
        gallery.verify(faces["names"][0], faces["genuine"][0].astype(np.float64))


# --------------------------------------------------------------------------- membership


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_remove_subject(faces: dict, index: str) -> None:
    g = small_gallery(faces, index=index)
    names = faces["names"]
    g.calibrate(max_pairs=100_000)
    gone = names[:10]
    for name in gone:
        g.remove(name)
    assert len(g) == 390 and len(g.index) == 390
    for name in gone:
        assert name not in g and name not in g.subjects()
        with pytest.raises(UnknownSubjectError):
            g.verify(name, faces["genuine"][0])
        with pytest.raises(UnknownSubjectError):
            g.remove(name)
    probes = np.vstack([faces["genuine"][:10], faces["enrol"][:10]])  # even their enrolment templates
    for candidates in g.identify_many(probes, k=20, threshold=-1.0):
        assert len(candidates) == 20
        assert not {c.subject for c in candidates} & set(gone)
    # The others are unaffected in 1:1.
    assert np.mean([g.verify(names[i], faces["genuine"][i]).verified for i in range(10, 110)]) >= 0.98
    # A removed subject can enrol again.
    g.enrol(gone[0], faces["genuine2"][0])
    assert g.verify(gone[0], faces["genuine"][0]).verified


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_approximate_gallery_identifies_after_a_removal(faces: dict, index: str) -> None:
    g = small_gallery(faces, n=1000, index=index)
    g.calibrate(max_pairs=100_000)
    names = faces["names"]
    before = g.identify_many(faces["genuine"][1:201], k=1)
    assert np.mean([bool(c) and c[0].subject == names[i + 1] for i, c in enumerate(before)]) >= 0.95
    g.remove(names[0])
    after = g.identify_many(faces["genuine"][1:201], k=1)
    assert np.mean([bool(c) and c[0].subject == names[i + 1] for i, c in enumerate(after)]) >= 0.95


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_enrol_conflicts_store_nothing(faces: dict, index: str) -> None:
    g = small_gallery(faces, n=100, index=index)
    names = faces["names"]
    blob_before = g.index.serialize(KEY_A.subkey("index-mac"))
    batches = [
        (["new-1", names[5], "new-2"], IdConflictError),  # already enrolled
        ([names[99]], IdConflictError),
        (["new-1", "new-1", "new-2"], InvalidInputError),  # duplicate in one call
        (["new-1", ""], InvalidInputError),
    ]
    for batch, error in batches:
        with pytest.raises(error):
            g.enrol(batch, faces["genuine2"][: len(batch)])
    bad = faces["genuine2"][:3].copy()
    bad[2, 0] = np.nan
    with pytest.raises(InvalidInputError):
        g.enrol(["new-1", "new-2", "new-3"], bad)
    with pytest.raises(InvalidInputError):
        g.enrol(["new-1", "new-2"], faces["genuine2"][:3])  # count mismatch
    assert len(g) == 100 and len(g.index) == 100
    assert "new-1" not in g and "new-2" not in g
    assert g.index.serialize(KEY_A.subkey("index-mac")) == blob_before
    # The original enrolment of the conflicting subject is untouched.
    assert g.verify(names[5], faces["enrol"][5], threshold=0.99).verified
    with pytest.raises(IdConflictError):
        g.enrol(names[5], faces["genuine2"][5])
    assert issubclass(IdConflictError, ValueError)


def test_unknown_subject(gallery: Gallery, faces: dict) -> None:
    for who in ("nobody", "", "subject-99999"):
        with pytest.raises(UnknownSubjectError) as info:
            gallery.verify(who, faces["genuine"][0])
        assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError):
        gallery.verify(12345, faces["genuine"][0])  # not even a string
    with pytest.raises(UnknownSubjectError):
        gallery.remove("nobody")
    assert len(gallery) == N_SUBJECTS


# --------------------------------------------------------------------------- calibration


def test_too_few_subjects_cannot_calibrate(faces: dict) -> None:
    g = small_gallery(faces, n=20)  # 380 impostor pairs
    with pytest.raises(NotCalibratedError):
        g.calibrate(1e-3)
    with pytest.raises(NotCalibratedError):
        g.calibrate()  # default target 1e-2 needs 1000 pairs
    assert g.threshold is None
    with pytest.raises(NotCalibratedError):
        g.verify(faces["names"][0], faces["genuine"][0])
    with pytest.raises(NotCalibratedError):
        g.identify(faces["genuine"][0])
    assert issubclass(NotCalibratedError, RuntimeError)
    empty = Gallery(CancellableHash(KEY_A, DIM))
    with pytest.raises(NotCalibratedError):
        empty.calibrate(0.5)


@pytest.mark.parametrize("fmr", [0.0, 1.0, -0.1, 2.0])
def test_bad_target_fmr(faces: dict, fmr: float) -> None:
    with pytest.raises(InvalidInputError):
        Gallery(CancellableHash(KEY_A, DIM), target_fmr=fmr)
    with pytest.raises(InvalidInputError):
        small_gallery(faces, n=50).calibrate(fmr)


def test_bad_index_kind() -> None:
    with pytest.raises(InvalidInputError):
        Gallery(CancellableHash(KEY_A, DIM), index="annoy")
    with pytest.raises(InvalidInputError):  # an index of another code width
        Gallery(CancellableHash(KEY_A, DIM), index=fpmatch.FlatIndex(512))
    assert isinstance(Gallery(CancellableHash(KEY_A, DIM), index="hnsw").index, HNSWIndex)
    assert isinstance(Gallery(CancellableHash(KEY_A, DIM), index="ivf").index, fpmatch.IVFIndex)


def test_ivf_first_enrolment_smaller_than_nlist_stores_nothing(faces: dict) -> None:
    names, enrol = faces["names"], faces["enrol"]
    for index, nlist in ((small_ivf(), IVF_NLIST), ("ivf", 1024)):
        g = Gallery(CancellableHash(KEY_A, DIM), index=index, target_fmr=TARGET_FMR)
        blob = g.index.serialize(KEY_A.subkey("index-mac"))
        for n in (1, nlist // 2, nlist - 1):
            with pytest.raises(InvalidInputError):
                g.enrol(names[:n], enrol[:n])
            assert len(g) == 0 and len(g.index) == 0 and g.subjects() == []
            assert names[0] not in g and not g.index.is_trained
            assert g.index.serialize(KEY_A.subkey("index-mac")) == blob
            with pytest.raises(UnknownSubjectError):
                g.verify(names[0], enrol[0], threshold=0.5)
            assert g.identify(enrol[0], k=3, threshold=-1.0) == []
        assert g.index.nlist == nlist
    # Exactly nlist subjects suffice, and the failed attempts used up no ids; later
    # enrolments may be of any size.
    g = Gallery(CancellableHash(KEY_A, DIM), index=small_ivf(), target_fmr=TARGET_FMR)
    with pytest.raises(InvalidInputError):
        g.enrol(names[: IVF_NLIST - 1], enrol[: IVF_NLIST - 1])
    g.enrol(names[:IVF_NLIST], enrol[:IVF_NLIST])
    assert g.index.is_trained and len(g) == len(g.index) == IVF_NLIST
    assert sorted(g.index.ids().tolist()) == list(range(IVF_NLIST)) and g.id_of(names[0]) == 0
    g.enrol(names[IVF_NLIST], enrol[IVF_NLIST])
    g.enrol(names[IVF_NLIST + 1 : IVF_NLIST + 3], enrol[IVF_NLIST + 1 : IVF_NLIST + 3])
    assert len(g) == IVF_NLIST + 3
    for i in (0, IVF_NLIST, IVF_NLIST + 2):
        assert g.verify(names[i], enrol[i], threshold=0.99).verified
        assert g.identify(enrol[i], k=1, threshold=0.99)[0].subject == names[i]
    # An index trained beforehand takes a first enrolment of any size.
    trained = small_ivf()
    trained.train(CancellableHash(KEY_A, DIM).protect(enrol[:400]))
    g = Gallery(CancellableHash(KEY_A, DIM), index=trained, target_fmr=TARGET_FMR)
    g.enrol(names[500], enrol[500])
    assert g.index is trained and len(trained) == 1
    assert g.identify(enrol[500], k=1, threshold=0.99)[0].subject == names[500]


def test_empty_ivf_gallery_saved_and_loaded_still_trains_on_its_first_enrolment(tmp_path, faces: dict) -> None:
    names, enrol = faces["names"], faces["enrol"]
    Gallery(CancellableHash(KEY_A, DIM), index=small_ivf(), target_fmr=TARGET_FMR).save(tmp_path / "g.fpg")
    loaded = Gallery.load(tmp_path / "g.fpg", KEY_A)
    assert isinstance(loaded.index, fpmatch.IVFIndex) and not loaded.index.is_trained
    assert loaded.index.nlist == IVF_NLIST and len(loaded) == 0
    with pytest.raises(InvalidInputError):
        loaded.enrol(names[:10], enrol[:10])
    assert len(loaded) == len(loaded.index) == 0
    loaded.enrol(names[:100], enrol[:100])
    assert loaded.index.is_trained and len(loaded) == 100
    assert loaded.identify(enrol[7], k=1, threshold=0.99)[0].subject == names[7]


def test_ivf_index_object_must_be_empty_and_of_the_scheme_width(faces: dict) -> None:
    with pytest.raises(InvalidInputError):
        Gallery(CancellableHash(KEY_A, DIM), index=fpmatch.IVFIndex(512, nlist=IVF_NLIST))
    used = small_ivf()
    codes = CancellableHash(KEY_A, DIM).protect(faces["enrol"][:64])
    used.train(codes)
    used.add(codes, np.arange(64, dtype=np.int64))
    with pytest.raises(InvalidInputError):
        Gallery(CancellableHash(KEY_A, DIM), index=used)


def test_default_ivf_gallery_trains_on_a_large_first_enrolment(faces: dict) -> None:
    names = faces["names"]
    g = Gallery(CancellableHash(KEY_A, DIM), index="ivf", target_fmr=TARGET_FMR)
    g.enrol(names, faces["enrol"])  # 3000 subjects >= the default nlist of 1024
    index = g.index
    assert isinstance(index, fpmatch.IVFIndex) and index.is_trained
    assert (index.nlist, index.nprobe, index.rerank) == (1024, 512, 256) and len(index) == N_SUBJECTS
    g.calibrate(max_pairs=100_000)
    found = g.identify_many(faces["genuine"][:1000], k=1)
    assert np.mean([bool(c) and c[0].subject == names[i] for i, c in enumerate(found)]) >= 0.98
    assert all(g.identify(faces["enrol"][i], k=1)[0].subject == names[i] for i in range(0, N_SUBJECTS, 97))


def test_ivf_gallery_accepts_codes_narrower_than_the_default_prefix(faces: dict) -> None:
    g = Gallery(CancellableHash(KEY_A, DIM, 128), index="ivf", target_fmr=TARGET_FMR)
    g.enrol(faces["names"][:1024], faces["enrol"][:1024])
    assert g.identify(faces["enrol"][0], k=1, threshold=0.99)[0].subject == faces["names"][0]


def test_calibrate_from_labelled_templates(gallery: Gallery, faces: dict) -> None:
    g = small_gallery(faces, n=20)
    others = Faces(400, seed=9)
    templates = np.vstack([others.sample(), others.sample()])
    labels = np.concatenate([np.arange(400), np.arange(400)])
    threshold = g.calibrate(TARGET_FMR, templates, labels, max_pairs=200_000)
    assert threshold == g.threshold
    # Same model, same target. Code-to-code calibration on the large gallery is
    # noisier than probe-to-code scores, so its threshold sits a little higher.
    assert 0.0 <= gallery.threshold - threshold < 0.05
    names = faces["names"]
    assert all(g.verify(names[i], faces["genuine"][i]).verified for i in range(20))
    assert np.mean([g.verify(names[i % 20], faces["strangers"][i]).verified for i in range(1000)]) <= 2 * TARGET_FMR
    with pytest.raises(InvalidInputError):
        g.calibrate(TARGET_FMR, templates, None)
    with pytest.raises(InvalidInputError):
        g.calibrate(TARGET_FMR, templates, labels[:-1])


def test_stricter_target_gives_stricter_threshold(faces: dict) -> None:
    g = small_gallery(faces, n=800)
    loose = g.calibrate(1e-2, max_pairs=300_000)
    strict = g.calibrate(1e-4, max_pairs=300_000)
    assert strict > loose
    assert g.threshold == strict and g.target_fmr == 1e-4


# --------------------------------------------------------------------------- persistence


def _decisions(g: Gallery, faces: dict) -> tuple:
    names = faces["names"]
    verify = [g.verify(names[i], faces["genuine"][i]) for i in range(150)]
    verify += [g.verify(names[i], faces["strangers"][i]) for i in range(150)]
    return verify, g.identify_many(faces["genuine"][:150], k=3), g.identify_many(faces["strangers"][:50], k=3)


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, faces: dict, index: str) -> None:
    g = small_gallery(faces, n=500, index=index)
    g.calibrate(max_pairs=100_000)
    g.remove(faces["names"][499])
    path = tmp_path / "gallery.fpg"
    g.save(path)
    loaded = Gallery.load(path, KEY_A)
    assert type(loaded.index) is type(g.index)
    assert loaded.subjects() == g.subjects() and len(loaded) == 499
    assert loaded.threshold == g.threshold and loaded.target_fmr == g.target_fmr
    assert loaded.scheme == g.scheme
    assert _decisions(loaded, faces) == _decisions(g, faces)
    if index == "hnsw":
        assert loaded.index.tombstones == g.index.tombstones == 1
    if index == "ivf":
        assert loaded.index.is_trained and loaded.index.nlist == IVF_NLIST
        assert (loaded.index.nprobe, loaded.index.rerank) == (g.index.nprobe, g.index.rerank)
    # Saving the loaded gallery writes the same bytes.
    loaded.save(tmp_path / "again.fpg")
    assert (tmp_path / "again.fpg").read_bytes() == path.read_bytes()
    # Enrolment continues after a reload without reusing ids.
    loaded.enrol("late-comer", faces["genuine2"][0])
    assert loaded.verify("late-comer", faces["genuine2"][0], threshold=0.99).verified
    assert loaded.verify(faces["names"][0], faces["genuine"][0]).verified


def test_save_load_with_offset(tmp_path, faces: dict) -> None:
    rng = np.random.default_rng(3)
    u = unit(rng.standard_normal(DIM)).astype(np.float32)
    g = Gallery(CancellableHash(KEY_A, DIM, 512, offset=u), target_fmr=TARGET_FMR)
    g.enrol(faces["names"][:200], faces["enrol"][:200])
    g.save(tmp_path / "g.fpg")
    loaded = Gallery.load(tmp_path / "g.fpg", KEY_A)
    np.testing.assert_array_equal(loaded.scheme.offset, u)
    np.testing.assert_array_equal(loaded.scheme.protect(faces["genuine"][:20]), g.scheme.protect(faces["genuine"][:20]))


def test_load_with_another_key_fails(tmp_path, faces: dict) -> None:
    g = small_gallery(faces, n=100)
    g.save(tmp_path / "g.fpg")
    with pytest.raises((AuthenticationError, KeyMismatchError)):
        Gallery.load(tmp_path / "g.fpg", KEY_B)
    with pytest.raises((AuthenticationError, KeyMismatchError)):
        Gallery.load(tmp_path / "g.fpg", HashKey(KEY_A.secret[:16]))


def test_damaged_gallery_file_fails_authentication(tmp_path, faces: dict) -> None:
    g = small_gallery(faces, n=100)
    path = tmp_path / "g.fpg"
    g.save(path)
    blob = path.read_bytes()
    n = len(blob)
    positions = sorted(set(np.linspace(0, n - 1, 40).astype(int).tolist()) | {0, 7, 8, 15, 16, 30, n - 33, n - 1})
    for pos in positions:
        damaged = bytearray(blob)
        damaged[pos] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(AuthenticationError):
            Gallery.load(path, KEY_A)
    for length in (0, 8, 47, n // 2, n - 1):
        path.write_bytes(blob[:length])
        with pytest.raises(AuthenticationError):
            Gallery.load(path, KEY_A)
    path.write_bytes(blob + b"\x00")
    with pytest.raises(AuthenticationError):
        Gallery.load(path, KEY_A)
    path.write_bytes(blob)
    assert len(Gallery.load(path, KEY_A)) == 100


def test_key_file_inside_gallery_directory_is_refused(tmp_path, faces: dict) -> None:
    store = tmp_path / "store"
    (store / "keys").mkdir(parents=True)
    outside = tmp_path / "vault"
    outside.mkdir()
    for key_path in (store / "hash.key", store / "keys" / "hash.key"):
        KEY_A.save(key_path)
        key = HashKey.load(key_path)
        g = Gallery(CancellableHash(key, DIM), target_fmr=TARGET_FMR)
        g.enrol(faces["names"][:5], faces["enrol"][:5])
        with pytest.raises(KeyFileError):
            g.save(store / "gallery.fpg")
        assert not (store / "gallery.fpg").exists()
        assert not (store / "gallery.fpg.tmp").exists()
        key_path.unlink()
    # Kept apart, the same key works; loading with a key file inside the store is refused too.
    key = HashKey.load(KEY_A.save(outside / "hash.key"))
    g = Gallery(CancellableHash(key, DIM), target_fmr=TARGET_FMR)
    g.enrol(faces["names"][:5], faces["enrol"][:5])
    g.save(store / "gallery.fpg")
    assert len(Gallery.load(store / "gallery.fpg", key)) == 5
    inside = HashKey.load(KEY_A.save(store / "hash.key"))
    with pytest.raises(KeyFileError):
        Gallery.load(store / "gallery.fpg", inside)


def test_probes_are_not_stored(tmp_path, gallery: Gallery, faces: dict) -> None:
    before = tmp_path / "before.fpg"
    after = tmp_path / "after.fpg"
    gallery.save(before)
    names = faces["names"]
    for i in range(100):
        gallery.verify(names[i], faces["genuine"][i])
        gallery.verify(names[i], faces["strangers"][i], threshold=0.2)
    gallery.identify_many(faces["genuine2"][:500], k=5)
    gallery.identify(faces["strangers"][0], k=10, threshold=-1.0)
    gallery.save(after)
    assert before.read_bytes() == after.read_bytes()
    assert len(gallery) == N_SUBJECTS
    # Nothing in the file reveals a probe's code either.
    probe_code = gallery.scheme.protect(faces["strangers"][0]).tobytes()
    assert probe_code not in after.read_bytes()


# --------------------------------------------------------------------------- renewability


def test_rekeying_cancels_old_codes(tmp_path, faces: dict) -> None:
    g = small_gallery(faces, n=1000, key=KEY_A)
    g.calibrate(max_pairs=200_000)
    names = faces["names"]
    probes = faces["genuine"][:1000]
    assert np.mean([g.verify(names[i], probes[i]).verified for i in range(1000)]) >= 0.98

    # The same stored codes, probed through a scheme under another key.
    g.save(tmp_path / "a.fpg")
    stolen = Gallery.load(tmp_path / "a.fpg", KEY_A)
    stolen.scheme = CancellableHash(KEY_B, DIM)
    crossed = [stolen.verify(names[i], probes[i]) for i in range(1000)]
    assert np.mean([r.verified for r in crossed]) <= 0.05
    assert abs(np.mean([r.score for r in crossed])) < 0.05  # scores as for strangers
    rank1 = [c and c[0].subject == names[i] for i, c in enumerate(stolen.identify_many(probes[:300], k=1))]
    assert np.mean([bool(x) for x in rank1]) <= 0.05

    # Re-enrolling under the new key restores matching (renewal).
    renewed = small_gallery(faces, n=1000, key=KEY_B)
    renewed.calibrate(max_pairs=200_000)
    assert np.mean([renewed.verify(names[i], probes[i]).verified for i in range(1000)]) >= 0.98
    codes_a = g.index.reconstruct(g.index.ids()[:1])
    assert abs(np.unpackbits(codes_a ^ CancellableHash(KEY_B, DIM).protect(faces["enrol"][0])).mean() - 0.5) < 0.1


def test_default_shortlist_follows_the_model_and_survives_save(tmp_path, faces: dict) -> None:
    centred = Gallery(CancellableHash(KEY_A, DIM))
    assert centred.shortlist == 128
    axis = np.zeros(DIM, dtype=np.float32)
    axis[0] = 1.0
    narrow = Gallery(CancellableHash(KEY_A, DIM, offset=axis))
    assert narrow.shortlist == 1024
    chosen = small_gallery(faces, n=50)
    chosen.shortlist = 300
    chosen.threshold = 0.3
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    chosen.save(data_dir / "g.bin")
    loaded = Gallery.load(data_dir / "g.bin", KEY_A)
    assert loaded.shortlist == 300 and loaded.threshold == 0.3
    with pytest.raises(InvalidInputError):
        Gallery(CancellableHash(KEY_A, DIM), shortlist=0)


# --------------------------------------------------------------------------- bounds and races


def test_the_gallery_is_the_hash_scheme_gallery_the_service_runs(gallery: Gallery, faces: dict) -> None:
    from fpmatch.edge import CaptureEdge
    from fpmatch.galleries import HashSchemeGallery, ProtectedGallery

    assert isinstance(gallery, HashSchemeGallery) and isinstance(gallery, ProtectedGallery)
    # A capture edge under the same key makes probes this gallery decides on, as the service would.
    edge = CaptureEdge(KEY_A, DIM, scheme="hash")
    assert edge.profile.profile_id == gallery.profile.profile_id
    probe = edge.probe(faces["genuine"][7])
    assert gallery.decide(faces["names"][7], probe, gallery.threshold)
    assert gallery.search(probe, 1, gallery.threshold, lambda name: True) == [faces["names"][7]]
    assert gallery.search(probe, 1, gallery.threshold, lambda name: name != faces["names"][7]) != [faces["names"][7]]


def test_identify_takes_exactly_one_probe_and_bounded_k(gallery: Gallery, faces: dict) -> None:
    for probes in (faces["genuine"][:0], faces["genuine"][:4]):
        with pytest.raises(InvalidInputError, match="one probe"):
            gallery.identify(probes)
    for k in (0, True, 10**9, 2.0):
        with pytest.raises(InvalidInputError, match="k must be"):
            gallery.identify(faces["genuine"][0], k=k)  # type: ignore[arg-type]
    for shortlist in (0, 10**9, True):
        with pytest.raises(InvalidInputError, match="shortlist"):
            Gallery(CancellableHash(KEY_A, DIM), shortlist=shortlist)
    assert len(gallery.identify_many(faces["genuine"][:3], k=2)) == 3


def test_a_huge_or_endless_key_file_is_refused(tmp_path) -> None:
    from fpmatch.errors import KeyFileError

    big = tmp_path / "big.key"
    big.write_bytes(b"{" + b" " * (1 << 17) + b"}")
    for path in (big, "/dev/zero"):
        with pytest.raises(KeyFileError, match="over"):
            HashKey.load(path)


def test_identify_while_another_thread_removes_never_fails(faces: dict) -> None:
    import threading

    g = small_gallery(faces, n=1500)
    errors: list[BaseException] = []
    done = threading.Event()

    def search() -> None:
        while not done.is_set():
            try:
                g.identify(faces["genuine"][int(np.random.default_rng().integers(1500))], k=10, threshold=-1.0)
            except BaseException as exc:  # noqa: BLE001 - any error is the failure
                errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    for name in faces["names"][:600]:
        g.remove(name)
    done.set()
    for t in threads:
        t.join()
    assert not errors and len(g) == 900


def test_gallery_files_that_are_not_regular_files_are_refused_before_reading(tmp_path) -> None:
    import os

    from fpmatch.errors import KeyFileError
    from fpmatch.he import EncryptedGallery, HybridGallery, KeyHolder

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo, tmp_path):
        with pytest.raises(InvalidInputError, match="not a regular file"):
            Gallery.load(path, KEY_B)
        with pytest.raises(InvalidInputError, match="not a regular file"):
            HybridGallery.load(path, KEY_B)
        with pytest.raises(InvalidInputError, match="not a regular file"):
            EncryptedGallery.load(path)
        with pytest.raises(KeyFileError, match="not a regular file"):
            KeyHolder.load(path)
