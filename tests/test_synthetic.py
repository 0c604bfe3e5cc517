"""Tests for the synthetic face-embedding generator."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fpmatch.synthetic import (
    PROFILES,
    FaceGenerator,
    FaceProfile,
    Faces,
    make_faces,
    pair_scores,
)

# (genuine mean, genuine std, impostor mean, impostor std) each profile must reproduce.
TARGETS = {
    "centred": (0.63, 0.05, 0.0, 1.0 / np.sqrt(512)),
    "offset": (0.95, 0.015, 0.83, 0.035),
    "hard": (0.216, 0.053, 0.0, 1.0 / np.sqrt(512)),
}
MEAN_TOL = 0.02
STD_TOL = 0.01


@pytest.fixture(scope="module", params=sorted(PROFILES))
def gallery(request: pytest.FixtureRequest) -> Faces:
    # 5,000 identities x 2 = 10,000 rows: crosses the internal chunk boundary.
    return make_faces(5000, 2, profile=request.param, seed=7)


def test_builtin_profiles() -> None:
    assert set(PROFILES) == {"centred", "offset", "hard"}
    assert PROFILES["centred"].dim == 512
    assert PROFILES["centred"].offset_weight == 0.0
    assert PROFILES["offset"].dim == 128
    assert PROFILES["offset"].offset_weight > 0.0
    for name, profile in PROFILES.items():
        assert profile.name == name


def test_shapes_dtypes_norms(gallery: Faces) -> None:
    emb, labels = gallery.embeddings, gallery.labels
    dim = gallery.profile.dim
    assert emb.shape == (10000, dim)
    assert emb.dtype == np.float32
    assert emb.flags.c_contiguous
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float64), axis=1), 1.0, atol=1e-5)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.repeat(np.arange(5000), 2))


def test_statistics_match_profile(gallery: Faces) -> None:
    genuine, impostor = pair_scores(gallery.embeddings, gallery.labels, 20000, seed=3)
    g_mean, g_std, i_mean, i_std = TARGETS[gallery.profile.name]
    assert abs(genuine.mean() - g_mean) <= MEAN_TOL, genuine.mean()
    assert abs(genuine.std() - g_std) <= STD_TOL, genuine.std()
    assert abs(impostor.mean() - i_mean) <= MEAN_TOL, impostor.mean()
    assert abs(impostor.std() - i_std) <= STD_TOL, impostor.std()
    # Genuine pairs must be clearly separated from impostors on average.
    assert genuine.mean() - impostor.mean() > 0.1


def test_centred_genuine_range() -> None:
    faces = make_faces(3000, 2, profile="centred", seed=1)
    genuine, _ = pair_scores(faces.embeddings, faces.labels, 20000, seed=1)
    lo, hi = np.quantile(genuine, [0.001, 0.999])
    assert 0.4 <= lo < 0.55
    assert 0.72 < hi <= 0.8


def test_hard_profile_loses_genuine_pairs_at_a_low_false_accept_rate() -> None:
    faces = make_faces(5000, 2, profile="hard", seed=2)
    genuine, impostor = pair_scores(faces.embeddings, faces.labels, 200_000, seed=2)
    threshold = np.sort(impostor)[-21]  # 20 impostors above it: FAR 1e-4
    assert 0.7 < np.mean(genuine > threshold) < 0.95


def test_offset_genuine_spread_not_degenerate() -> None:
    faces = make_faces(3000, 2, profile="offset", seed=1)
    genuine, _ = pair_scores(faces.embeddings, faces.labels, 20000, seed=1)
    assert genuine.std() > 0.01


def test_offset_templates_share_direction() -> None:
    gen = FaceGenerator("offset", seed=5)
    u = gen.offset_direction
    assert u is not None and u.shape == (128,)
    assert abs(np.linalg.norm(u) - 1.0) < 1e-5
    faces = make_faces(2000, 2, profile="offset", seed=5)
    mean = faces.embeddings.mean(axis=0)
    assert np.linalg.norm(mean) > 0.85
    assert float(mean @ u) / np.linalg.norm(mean) > 0.99


def test_centred_templates_have_no_offset() -> None:
    assert FaceGenerator("centred", seed=0).offset_direction is None
    faces = make_faces(2000, 2, profile="centred", seed=5)
    assert np.linalg.norm(faces.embeddings.mean(axis=0)) < 0.05


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_deterministic(name: str) -> None:
    a = make_faces(300, 3, profile=name, seed=11)
    b = make_faces(300, 3, profile=name, seed=11)
    c = make_faces(300, 3, profile=name, seed=12)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.embeddings, c.embeddings)
    ga, ia = pair_scores(a.embeddings, a.labels, 500, seed=2)
    gb, ib = pair_scores(b.embeddings, b.labels, 500, seed=2)
    np.testing.assert_array_equal(ga, gb)
    np.testing.assert_array_equal(ia, ib)


def test_make_faces_is_built_on_generator() -> None:
    faces = make_faces(50, 4, profile="offset", seed=9)
    gen = FaceGenerator("offset", seed=9)
    expected = gen.samples(gen.identities(50), 4)
    np.testing.assert_array_equal(faces.embeddings, expected)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_generator_gallery_and_probes(name: str) -> None:
    gen = FaceGenerator(name, seed=4)
    ids = gen.identities(400)
    assert ids.shape == (400, gen.profile.dim) and ids.dtype == np.float32
    gallery = gen.samples(ids, 1)
    probes = gen.samples(ids, 2)
    assert gallery.shape == (400, gen.profile.dim)
    assert probes.shape == (800, gen.profile.dim)
    assert probes.dtype == np.float32 and probes.flags.c_contiguous
    assert not np.array_equal(probes[0::2], gallery)
    # Each probe is closer to its own identity's gallery sample than to others' (on "hard",
    # which is meant to confuse some, most probes).
    scores = probes.astype(np.float64) @ gallery.T.astype(np.float64)
    own = scores[np.arange(800), np.arange(800) // 2]
    scores[np.arange(800), np.arange(800) // 2] = -np.inf
    assert np.mean(own > scores.max(axis=1)) > (0.85 if name == "hard" else 0.95)
    # Fresh identities differ from the first batch.
    assert not np.array_equal(gen.identities(400), ids)


def test_custom_profile() -> None:
    profile = FaceProfile(
        name="tiny",
        dim=64,
        offset_weight=0.5,
        noise_share=(0.1, 0.2),
        identity_rank=8,
        identity_decay=0.5,
        unit_identity=False,
    )
    faces = make_faces(200, 2, profile=profile, seed=0)
    assert faces.profile is profile
    assert faces.embeddings.shape == (400, 64)
    np.testing.assert_allclose(np.linalg.norm(faces.embeddings, axis=1), 1.0, atol=1e-5)
    # Identity variation is confined to 8 dimensions orthogonal to the offset.
    u = FaceGenerator(profile, seed=0).offset_direction
    ids = FaceGenerator(profile, seed=0).identities(100)
    assert u is not None
    assert np.abs(ids @ u).max() < 1e-4
    assert np.linalg.matrix_rank(ids.astype(np.float64), tol=1e-3) == 8


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="n_identities"):
        make_faces(0)
    with pytest.raises(ValueError, match="samples_per_identity"):
        make_faces(10, 0)
    with pytest.raises(ValueError, match="centred.*offset"):
        make_faces(10, profile="nope")
    with pytest.raises(ValueError, match="seed"):
        make_faces(10, seed=-1)
    with pytest.raises(TypeError):
        make_faces(10, profile=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nope"):
        FaceGenerator("nope")
    gen = FaceGenerator("centred")
    with pytest.raises(ValueError, match="per_identity"):
        gen.samples(gen.identities(2), 0)
    with pytest.raises(ValueError, match="identity_params"):
        gen.samples(np.zeros((2, 128), dtype=np.float32), 1)


@pytest.mark.parametrize(
    "changes",
    [
        {"dim": 1},
        {"offset_weight": 1.0},
        {"offset_weight": -0.1},
        {"noise_share": (0.3, 0.2)},
        {"offset_weight": 0.9, "noise_share": (0.05, 0.1)},
        {"identity_rank": 0},
        {"identity_rank": 513},
        {"identity_decay": -1.0},
    ],
)
def test_invalid_profile(changes: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(PROFILES["centred"], **changes)


def test_pair_scores_pairs_labels_correctly() -> None:
    # Rows of one label are identical and labels are orthogonal: genuine = 1, impostor = 0.
    labels = np.array([2, 0, 1, 0, 2, 1, 3, 3, 3], dtype=np.int64)
    emb = np.eye(4, dtype=np.float32)[labels] * np.linspace(1, 3, 9, dtype=np.float32)[:, None]
    genuine, impostor = pair_scores(emb, labels, 1000, seed=0)
    assert genuine.dtype == np.float64 and impostor.dtype == np.float64
    assert genuine.shape == (1000,) and impostor.shape == (1000,)
    np.testing.assert_allclose(genuine, 1.0)
    np.testing.assert_allclose(impostor, 0.0)


def test_pair_scores_needs_genuine_and_impostor_pairs() -> None:
    emb = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="genuine"):
        pair_scores(emb, np.array([0, 1, 2]), 10, seed=0)
    with pytest.raises(ValueError, match="two distinct labels"):
        pair_scores(emb, np.array([0, 0, 0]), 10, seed=0)
    with pytest.raises(ValueError, match="labels"):
        pair_scores(emb, np.array([0, 1]), 10, seed=0)
    with pytest.raises(ValueError, match="n_pairs"):
        pair_scores(emb, np.array([0, 0, 1]), 0, seed=0)
