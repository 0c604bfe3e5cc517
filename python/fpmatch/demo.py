"""End-to-end demo on synthetic faces: enrol, verify, identify, remove, reload."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import UnknownSubjectError
from .gallery import Gallery
from .hashing import CancellableHash, estimate_offset
from .keys import HashKey
from .synthetic import FaceGenerator


def _line(label: str, value: str) -> None:
    print(f"  {label:<38} {value}")


def run(n_subjects: int = 5000, n_probes: int = 500, seed: int = 7) -> dict[str, float]:
    """Run the demo and return its headline figures."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as keys_dir, tempfile.TemporaryDirectory() as store_dir:
        key = HashKey.generate()
        key_path = key.save(Path(keys_dir) / "hash.key")
        key = HashKey.load(key_path)
        print(f"fpmatch demo: {n_subjects} opted-in subjects per profile, synthetic templates, hash scheme")
        _line("key id (key file kept apart)", key.key_id)

        for profile in ("centred", "offset"):
            gen = FaceGenerator(profile, seed)
            people = gen.identities(n_subjects)
            enrolment = gen.samples(people)
            genuine = gen.samples(people[:n_probes])
            strangers = gen.samples(gen.identities(n_probes))
            names = [f"subject-{i:05d}" for i in range(n_subjects)]
            dim = enrolment.shape[1]

            offset = estimate_offset(gen.samples(gen.identities(2000)))
            gallery = Gallery(CancellableHash(key, dim, offset=offset))
            print(f"\n[{profile} profile: {dim}-D, shared offset {'removed' if offset is not None else 'none'}]")
            start = time.perf_counter()
            gallery.enrol(names, enrolment)
            enrol_s = time.perf_counter() - start
            _line("enrolled", f"{len(gallery)} subjects in {enrol_s:.2f} s ({len(gallery) / enrol_s:,.0f}/s)")
            threshold = gallery.calibrate(1e-4)
            _line("threshold for FMR 1e-4 (from codes)", f"score >= {threshold:.3f}")

            start = time.perf_counter()
            accepted = [gallery.verify(names[i], genuine[i]).verified for i in range(n_probes)]
            verify_ms = (time.perf_counter() - start) * 1000 / n_probes
            false = [gallery.verify(names[i], strangers[i]).verified for i in range(n_probes)]
            tar, fmr = float(np.mean(accepted)), float(np.mean(false))
            _line("1:1 genuine accepted (TAR)", f"{tar:.3f}  ({verify_ms:.2f} ms per verification)")
            _line("1:1 strangers accepted (FMR)", f"{fmr:.4f}")

            # Open-set 1:N compares a probe with every subject, so a false positive
            # identification rate (FPIR) of 1% needs an FMR of 1% / N per comparison.
            id_threshold = gallery.calibrate(0.01 / n_subjects)
            _line("threshold for FPIR 1e-2 over N", f"score >= {id_threshold:.3f}")
            start = time.perf_counter()
            found = gallery.identify_many(genuine, k=1)
            identify_ms = (time.perf_counter() - start) * 1000 / n_probes
            rank1 = float(np.mean([bool(c) and c[0].subject == names[i] for i, c in enumerate(found)]))
            unmatched = float(np.mean([not c for c in gallery.identify_many(strangers, k=1)]))
            _line("1:N rank-1 on genuine probes", f"{rank1:.3f}  ({identify_ms:.2f} ms per probe)")
            _line("1:N strangers left unmatched", f"{unmatched:.3f}")
            figures.update({f"{profile}_tar": tar, f"{profile}_fmr": fmr, f"{profile}_rank1": rank1})

        # Withdrawal: remove one subject and show they no longer match.
        gone = names[0]
        gallery.remove(gone)
        still = any(c.subject == gone for c in gallery.identify(genuine[0], k=5))
        print(f"\n[withdrawal of {gone}, {profile} gallery]")
        _line("still identified after removal", str(still))
        try:
            gallery.verify(gone, genuine[0])
        except UnknownSubjectError as exc:
            _line("verify after removal", f"refused: {exc}")

        path = Path(store_dir) / "gallery.fpg"
        gallery.save(path)
        reloaded = Gallery.load(path, key)
        same = reloaded.verify(names[1], genuine[1]).verified == gallery.verify(names[1], genuine[1]).verified
        _line("saved (codes only), authenticated reload", f"{path.stat().st_size / len(reloaded):.0f} bytes/subject, same decisions: {same}")
        figures["removed_still_identified"] = float(still)
    return figures
