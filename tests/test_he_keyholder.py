"""The key holder: public context only on the matching side, no raw decryption,
noise-flooded coarse scores, per-caller counting and rate limits, typed errors
for tampered or foreign ciphertexts, and the same interface from another process."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import struct
import time
from pathlib import Path

import numpy as np
import pytest

ts = pytest.importorskip("tenseal", reason="the he and hybrid schemes need TenSEAL (pip install tenseal)")

from fpmatch.errors import FpmatchError, InvalidInputError, KeyFileError, KeyMismatchError  # noqa: E402
from fpmatch.he import (  # noqa: E402
    CiphertextFormatError,
    CiphertextIntegrityError,
    DecryptionRefusedError,
    EncryptedGallery,
    EncryptedScores,
    KeyHolder,
    PublicContext,
    RateLimit,
    RateLimitExceededError,
    RemoteKeyHolder,
    ScoreDecider,
    SecretMaterialError,
    serve,
)
from fpmatch.he import context as he_context  # noqa: E402
from fpmatch.he.audit import SecretKeyAudit  # noqa: E402
from fpmatch.he.remote import handle  # noqa: E402

DIM = 64


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder(limits=RateLimit(requests_per_second=1e6, burst=1_000_000))


@pytest.fixture(scope="module")
def setup(holder: KeyHolder) -> dict:
    rng = np.random.default_rng(7)
    templates = unit_rows(rng, 80)
    probes = unit_rows(rng, 5)
    # A genuine probe for subject 0: close to its template.
    near = templates[0] + 0.3 * probes[0]
    near = (near / np.linalg.norm(near)).astype(np.float32)
    gallery = EncryptedGallery(holder.public_context(), DIM)
    gallery.enrol([f"s{i}" for i in range(80)], templates)
    return {"gallery": gallery, "templates": templates, "probes": probes, "near": near}


def message(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + payload


def reply(data: bytes) -> dict:
    (size,) = struct.unpack_from("<I", data)
    return json.loads(data[4 : 4 + size])


# -- public context ------------------------------------------------------------------------


def test_public_context_cannot_decrypt(holder: KeyHolder) -> None:
    public = PublicContext(holder.public_context())
    context = public.tenseal_context
    assert context.is_public() and not context.is_private() and not context.has_secret_key()
    with pytest.raises(ValueError):
        context.secret_key()
    vector = ts.ckks_vector(context, [0.25, 0.5], scale=2.0**20)
    with pytest.raises(ValueError):
        vector.decrypt()
    # Nothing secret survives a round trip either.
    again = PublicContext(public.to_bytes())
    assert again.key_id == holder.key_id and not again.tenseal_context.has_secret_key()


def test_context_with_secret_key_is_refused(tmp_path: Path) -> None:
    context = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[44, 60])
    meta = json.dumps({"key_id": "0" * 16, "template_scale_bits": 23, "probe_scale_bits": 14}).encode()
    secret = he_context._MAGIC + struct.pack("<I", len(meta)) + meta + context.serialize(save_secret_key=True)
    with pytest.raises(SecretMaterialError):
        PublicContext(secret)
    with pytest.raises(SecretMaterialError):
        EncryptedGallery(secret, DIM)


def test_damaged_public_context_gives_typed_errors(holder: KeyHolder) -> None:
    good = holder.public_context()
    bfv = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193)
    meta = good[12 : good.index(b"}") + 1]
    with pytest.raises(InvalidInputError):
        PublicContext(good[:12] + meta + he_context.serialize_public(bfv))
    with pytest.raises(CiphertextFormatError):
        PublicContext(b"not a context at all")
    with pytest.raises(CiphertextFormatError):
        PublicContext(good[:200])
    with pytest.raises(InvalidInputError):
        PublicContext("a string")  # type: ignore[arg-type]
    other = KeyHolder().public_context()
    # Another key's context under this key's id.
    forged = good[: good.index(b"}") + 1] + other[other.index(b"}") + 1 :]
    with pytest.raises(KeyMismatchError):
        PublicContext(forged)


def test_a_context_that_ends_seals_reader_is_refused_and_this_process_lives(holder: KeyHolder) -> None:
    # Found by fuzzing: SEAL aborts the process that reads these bytes (std::terminate from a
    # throwing destructor). They are read in a child process first and refused.
    from fpmatch.he import _isolated

    crafted = (Path(__file__).parents[1] / "fuzz" / "corpus" / "public_context" / "finding-seal-terminate").read_bytes()
    for _ in range(2):  # refused again: a refusal is not remembered as safe
        with pytest.raises(CiphertextFormatError, match="without ending the process"):
            PublicContext(crafted)
    _isolated._checked.clear()  # a context from elsewhere: read by a child first, then here
    assert PublicContext(holder.public_context()).key_id == holder.key_id
    assert len(_isolated._checked) == 1
    # The same bytes inside an (unsealed) key holder key file: refused, and this process lives.
    key_file = holder.to_bytes()
    meta_end = key_file.index(b"}") + 1
    with pytest.raises(KeyFileError, match="without ending the process"):
        KeyHolder.from_bytes(key_file[:meta_end] + crafted[crafted.index(b"}") + 1 :])


@pytest.mark.parametrize(
    "change",
    [
        lambda meta: {k: v for k, v in meta.items() if k != "template_scale_bits"},  # found by fuzzing: KeyError
        lambda meta: {k: v for k, v in meta.items() if k != "key_id"},
        lambda meta: [meta],
        lambda meta: {**meta, "probe_scale_bits": True},
        lambda meta: {**meta, "template_scale_bits": 99},
        lambda meta: {**meta, "probe_scale_bits": "14"},
    ],
)
def test_a_key_file_with_a_damaged_header_is_refused_with_key_file_error(holder: KeyHolder, change) -> None:
    data = holder.to_bytes()
    (meta_len,) = struct.unpack_from("<I", data, 8)
    meta = json.loads(data[12 : 12 + meta_len])
    damaged = json.dumps(change(meta)).encode()
    with pytest.raises(KeyFileError):
        KeyHolder.from_bytes(data[:8] + struct.pack("<I", len(damaged)) + damaged + data[12 + meta_len :])


def test_one_child_reads_every_context_and_ends_when_idle(holder: KeyHolder, monkeypatch) -> None:
    from fpmatch.he import _isolated

    monkeypatch.setattr(_isolated, "IDLE_SECONDS", 0.5)
    with _isolated._lock:
        _isolated._reader.stop()  # a child started before this test waits out the default idle time
    _isolated._checked.clear()
    PublicContext(holder.public_context())
    child = _isolated._reader._child
    assert child is not None and child.poll() is None
    assert KeyHolder.from_bytes(holder.to_bytes()).key_id == holder.key_id  # a secret context: same child
    assert _isolated._reader._child is child and len(_isolated._checked) == 2
    deadline = time.monotonic() + 10
    while _isolated._reader._child is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _isolated._reader._child is None and child.poll() is not None
    _isolated._checked.clear()
    assert PublicContext(holder.public_context()).key_id == holder.key_id  # a new child when needed


def test_a_context_check_that_hangs_is_ended_and_refused(holder: KeyHolder, monkeypatch) -> None:
    from fpmatch.he import _isolated

    with _isolated._lock:
        _isolated._reader.stop()
    reads_then_hangs = "import struct, sys, time\nsys.stdin.buffer.read(struct.unpack('<Q', sys.stdin.buffer.read(8))[0])\ntime.sleep(600)"
    monkeypatch.setattr(_isolated, "_SERVE", reads_then_hangs)
    monkeypatch.setattr(_isolated, "CHECK_TIMEOUT", 0.5)
    _isolated._checked.clear()
    with pytest.raises(CiphertextFormatError, match="no answer in"):
        PublicContext(holder.public_context())
    assert _isolated._reader._child is None  # the hung child was ended


# -- decisions and refusals -----------------------------------------------------------------


def test_decisions(holder: KeyHolder, setup: dict) -> None:
    gallery, near, probes = setup["gallery"], setup["near"], setup["probes"]
    cosine = float(np.dot(setup["templates"][0].astype(np.float64), near.astype(np.float64)))
    request = gallery.verification_request("s0", near).to_bytes()
    assert holder.decide(request, cosine - 0.01, caller="svc") == [True]
    assert holder.decide(request, cosine + 0.01, caller="svc") == [False]
    assert gallery.verify("s0", near, holder, 0.5, caller="svc").verified
    assert not gallery.verify("s1", near, holder, 0.5, caller="svc").verified
    matches = gallery.identify(near, holder, 0.5, 3, caller="svc")
    assert [m.subject for m in matches] == ["s0"]
    assert gallery.identify(probes[1], holder, 0.99, caller="svc") == []


def test_requests_joined_as_bytes_are_decided_as_one(holder: KeyHolder, setup: dict) -> None:
    """What a sharded service sends: the shards' requests joined without building their arrays."""
    from fpmatch.he.scores import join_requests

    gallery, near = setup["gallery"], setup["near"]
    parts = [gallery.verification_request(s, near).to_bytes() for s in ("s1", "s0", "s2")]
    joined = join_requests(parts)
    assert holder.decide(joined, 0.5, caller="svc") == [False, True, False]
    context = PublicContext(holder.public_context())
    ring = context.ring
    read = [EncryptedScores.from_bytes(p, key_id=context.key_id, n=ring.n, q=ring.q) for p in parts]
    whole = EncryptedScores.from_bytes(joined, key_id=context.key_id, n=ring.n, q=ring.q)
    assert np.array_equal(whole.a, np.concatenate([r.a for r in read]))
    assert np.array_equal(whole.b, np.concatenate([r.b for r in read]))
    offsets = np.cumsum([0] + [r.a.shape[0] for r in read[:-1]])
    assert np.array_equal(whole.row, np.concatenate([r.row + o for r, o in zip(read, offsets)]))
    assert join_requests(parts[:1]) == parts[0]
    other_key = parts[1][:8] + bytes(8) + parts[1][16:]
    with pytest.raises(KeyMismatchError):
        join_requests([parts[0], other_key])
    for broken in (parts[1][:-8], parts[1][:20], b"FPHESC02" + parts[1][8:]):
        with pytest.raises(CiphertextFormatError):
            join_requests([parts[0], broken])


def test_key_holder_never_returns_raw_decryptions(holder: KeyHolder, setup: dict) -> None:
    assert isinstance(holder, ScoreDecider)
    public_api = {name for name in dir(holder) if not name.startswith("_")}
    assert not {"decrypt", "decrypt_raw", "raw_scores", "secret_key", "secret_context"} & public_api
    request = setup["gallery"].verification_request("s0", setup["near"]).to_bytes()
    for sigma in (0.0, 1e-6, holder.min_coarse_noise / 2):
        with pytest.raises(DecryptionRefusedError):
            holder.coarse_scores(request, caller="svc", noise_sigma=sigma)
    # One bit per score is capped per request.
    request_many, _ = setup["gallery"].identification_request(setup["probes"][0])
    with pytest.raises(DecryptionRefusedError):
        holder.decide(request_many.to_bytes(), 0.5, caller="svc")
    # The process interface refuses anything but decisions and coarse scores.
    answer = reply(handle(holder, message({"op": "decrypt", "caller": "svc"}, request)))
    assert answer == {"ok": False, "error": "DecryptionRefusedError", "message": answer["message"]}
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(holder)


def test_coarse_scores_are_flooded_and_coarse(holder: KeyHolder, setup: dict) -> None:
    gallery, near = setup["gallery"], setup["near"]
    cosine = float(np.dot(setup["templates"][0].astype(np.float64), near.astype(np.float64)))
    request = gallery.verification_request("s0", near).to_bytes()
    values = np.array([holder.coarse_scores(request, caller="coarse", noise_sigma=0.05)[0] for _ in range(60)])
    assert np.allclose(values / holder.coarse_step, np.round(values / holder.coarse_step))
    assert abs(values.mean() - cosine) < 0.05 and 0.02 < values.std() < 0.1
    assert len(set(values.tolist())) > 3


def test_requests_are_counted_and_rate_limited(setup: dict) -> None:
    clock = Clock()
    holder = KeyHolder(limits=RateLimit(requests_per_second=2.0, burst=3), clock=clock)
    gallery = EncryptedGallery(holder.public_context(), DIM)
    gallery.enrol(["a", "b"], setup["templates"][:2])
    request = gallery.verification_request("a", setup["near"]).to_bytes()
    for _ in range(3):
        holder.decide(request, 0.5, caller="svc")
    with pytest.raises(RateLimitExceededError) as info:
        holder.decide(request, 0.5, caller="svc")
    assert isinstance(info.value, DecryptionRefusedError) and isinstance(info.value, PermissionError)
    holder.decide(request, 0.5, caller="other")  # budgets are per caller
    clock.now += 0.5  # one token back
    holder.decide(request, 0.5, caller="svc")
    with pytest.raises(RateLimitExceededError):
        holder.decide(request, 0.5, caller="svc")
    usage = holder.usage("svc")
    assert (usage.requests, usage.scores, usage.refused) == (6, 4, 2)
    assert holder.usage("other").requests == 1 and holder.usage("nobody").requests == 0
    with pytest.raises(InvalidInputError):
        holder.decide(request, 0.5, caller="")
    with pytest.raises(InvalidInputError):
        holder.decide(request, 1.5, caller="third")


# -- tampered and foreign ciphertexts --------------------------------------------------------


def test_tampered_requests_give_typed_errors(holder: KeyHolder, setup: dict) -> None:
    gallery = setup["gallery"]
    good = gallery.verification_request("s0", setup["near"]).to_bytes()
    cases = [
        b"",
        b"garbage",
        good[:-8],  # truncated
        good + b"\0" * 8,  # trailing bytes
        b"XXXXXXXX" + good[8:],  # magic
    ]
    for data in cases:
        with pytest.raises(CiphertextFormatError):
            holder.decide(data, 0.5, caller="tamper")
    out_of_range = bytearray(good)
    out_of_range[-8 * 3 - 8 : -8 * 3] = struct.pack("<q", -5)  # the b value
    with pytest.raises(CiphertextFormatError):
        holder.decide(bytes(out_of_range), 0.5, caller="tamper")
    with pytest.raises(CiphertextFormatError):
        holder.decide("not bytes", 0.5, caller="tamper")  # type: ignore[arg-type]


def test_garbage_ciphertexts_do_not_decrypt_to_scores(holder: KeyHolder, setup: dict) -> None:
    request, _ = setup["gallery"].identification_request(setup["probes"][0])
    rng = np.random.default_rng(0)
    flipped = EncryptedScores(
        request.key_id, request.scale_bits, request.q,
        a=request.a.copy(), b=rng.integers(0, request.q, len(request)), index=request.index, row=request.row,
    )  # fmt: skip
    with pytest.raises(CiphertextIntegrityError):
        holder.best(flipped.to_bytes(), 0.5, 5, caller="tamper")
    with pytest.raises(CiphertextIntegrityError):
        holder.best(flipped.to_bytes(), 0.5, 5, caller="tamper")


def test_foreign_key_gives_key_mismatch(holder: KeyHolder, setup: dict) -> None:
    other = KeyHolder()
    foreign = EncryptedGallery(other.public_context(), DIM)
    foreign.enrol([f"s{i}" for i in range(80)], setup["templates"])
    request, _ = foreign.identification_request(setup["probes"][0])
    with pytest.raises(KeyMismatchError):
        holder.best(request.to_bytes(), 0.5, 5, caller="foreign")
    # The same ciphertexts relabelled with this holder's key id: they do not decrypt here.
    relabelled = EncryptedScores(
        holder.key_id, request.scale_bits, request.q, request.a, request.b, request.index, request.row
    )
    assert request.q == holder._ring.q  # same parameters: the same prime
    with pytest.raises(CiphertextIntegrityError):
        holder.best(relabelled.to_bytes(), 0.5, 5, caller="foreign")
    with pytest.raises(FpmatchError):
        foreign.verify("s0", setup["near"], holder, 0.5, caller="foreign")


# -- key file ---------------------------------------------------------------------------------


def test_key_file_round_trip(tmp_path: Path, holder: KeyHolder, setup: dict) -> None:
    path = holder.save(tmp_path / "he.key")
    assert path.stat().st_mode & 0o777 == 0o600
    again = KeyHolder.load(path)
    assert again.key_id == holder.key_id
    request = setup["gallery"].verification_request("s0", setup["near"]).to_bytes()
    assert again.decide(request, 0.5, caller="svc") == [True]
    audit = SecretKeyAudit(path)
    cosine = float(np.dot(setup["templates"][0].astype(np.float64), setup["near"].astype(np.float64)))
    assert abs(audit.scores(request)[0] - cosine) < 2e-4
    with pytest.raises(FileExistsError):
        holder.save(path)
    (tmp_path / "bad.key").write_bytes(b"FPHESEC1" + b"\0" * 10)
    with pytest.raises(KeyFileError):
        KeyHolder.load(tmp_path / "bad.key")
    (tmp_path / "public.key").write_bytes(b"nonsense")
    with pytest.raises(KeyFileError):
        KeyHolder.load(tmp_path / "public.key")


# -- another process ----------------------------------------------------------------------------


def _run_key_holder(
    connection: multiprocessing.connection.Connection, peer: multiprocessing.connection.Connection
) -> None:
    peer.close()  # the forked copy of the other end would keep the stream open
    serve(KeyHolder(), connection)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_key_holder_in_another_process(setup: dict) -> None:
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    process = context.Process(target=_run_key_holder, args=(theirs, ours), daemon=True)
    process.start()
    theirs.close()  # so that the child sees the end of the stream when we close ours
    try:
        remote = RemoteKeyHolder(ours)
        assert isinstance(remote, ScoreDecider)
        gallery = EncryptedGallery(remote.public_context(), DIM)
        gallery.enrol([f"s{i}" for i in range(80)], setup["templates"])
        assert gallery.verify("s0", setup["near"], remote, 0.5, caller="svc").verified
        assert not gallery.verify("s1", setup["near"], remote, 0.5, caller="svc").verified
        assert [m.subject for m in gallery.identify(setup["near"], remote, 0.5, caller="svc")] == ["s0"]
        request = gallery.verification_request("s0", setup["near"]).to_bytes()
        assert len(remote.coarse_scores(request, caller="svc")) == 1
        with pytest.raises(DecryptionRefusedError):
            remote.coarse_scores(request, caller="svc", noise_sigma=0.0)
        with pytest.raises(CiphertextFormatError):
            remote.decide(b"junk", 0.5, caller="svc")
        usage = remote.usage("svc")
        assert (usage.requests, usage.refused) == (6, 1)
    finally:
        ours.close()
        process.join(10)
    assert process.exitcode == 0


def test_the_key_id_is_the_digest_of_every_public_key_value(holder: KeyHolder) -> None:
    # Key files and public contexts carry the key id: it must not change with how the key is read.
    ring = holder._ring
    key, key_id = ring.public_key(holder._context)
    array = key.data().dyn_array()
    values = np.fromiter(map(array.at, range(array.size())), dtype=np.uint64, count=array.size())
    assert array.size() == 2 * len(ring.prime_bits) * ring.n
    digest = hashlib.sha256(b"fpmatch.he.key-id.v1")
    digest.update(np.array([ring.n, *ring.prime_bits, ring.q], dtype=np.int64).tobytes())
    digest.update(values.tobytes())
    assert key_id == holder.key_id == PublicContext(holder.public_context()).key_id == digest.hexdigest()[:16]


def test_a_key_file_without_its_public_key_is_refused(holder: KeyHolder) -> None:
    # Found by fuzzing: a secret context without its public key raised TypeError inside TenSEAL.
    data = holder.to_bytes()
    (meta_len,) = struct.unpack_from("<I", data, 8)
    secret_only = holder._context.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    with pytest.raises(KeyFileError, match="no public key"):
        KeyHolder.from_bytes(data[: 12 + meta_len] + secret_only)
