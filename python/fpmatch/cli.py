"""The ``fpmatch`` command line.

A deployment has three parties, and the store commands play all three on one
machine, each from its own key file: the capture edge (``--key``, the hash or
transform key) turns .npy templates into protected messages; the matching
service (``--service-key``) stores and matches those messages and holds
neither other key; the key holder (``--keyholder-key``, hybrid and he stores)
holds the CKKS secret key and answers only decisions on encrypted scores.

Exit status: 0 when a command ran (``verify`` and ``identify`` print their
outcome; ``--exit-code`` turns it into the status), 1 when ``audit verify``
finds the chain broken, 2 on an error or a usage error, with one line
``fpmatch: error: ...`` on stderr. Set ``FPMATCH_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ._progress import progress_bars
from .consent import system_clock
from .edge import SCHEMES, CaptureEdge, EdgeProfile
from .errors import ConsentRequiredError, FpmatchError, IdConflictError, KeyFileError, NotCalibratedError
from .hashing import DEFAULT_BITS, SCHEME as HASH_SCHEME
from .keys import HashKey, ServiceKey, ensure_outside
from .service import MatchingService, VerificationOutcome
from .store import DATABASE, Store

#: ``verify --exit-code``: the status for each outcome (2 stays reserved for errors).
VERIFY_STATUS = {
    VerificationOutcome.MATCH: 0,
    VerificationOutcome.NO_MATCH: 1,
    VerificationOutcome.USE_ALTERNATIVE: 3,
}
#: The scheme of a new store unless --scheme says otherwise.
DEFAULT_SCHEME = "hybrid"
#: Subjects per transaction in a batch enrolment.
ENROL_CHUNK = 1000
_MAX_RETENTION_DAYS = 36_525
_FORMATTER = argparse.RawDescriptionHelpFormatter

Handler = Callable[[argparse.Namespace], int]

#: Key file kinds: (option, environment variable, what the file holds).
_KEY_KINDS = {
    "edge": ("--key", "FPMATCH_KEY", "capture edge's hash key"),
    "service": ("--service-key", "FPMATCH_SERVICE_KEY", "matching service's key"),
    "keyholder": ("--keyholder-key", "FPMATCH_KEYHOLDER_KEY", "key holder's secret key"),
}

_ROLES = (
    "The command line plays the three parties of a deployment on one machine, each from its own\n"
    "key file: the capture edge (--key, the hash or transform key) turns .npy templates into\n"
    "protected messages; the matching service (--service-key) stores and matches only those and\n"
    "holds neither other key; the key holder (--keyholder-key; hybrid and he stores) holds the\n"
    "CKKS secret key and answers decisions on encrypted scores, never decryptions."
)


class CliError(Exception):
    """A problem with what the command line asked for; reported as one line, exit 2."""


# -- argument types -----------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size_list(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 16:
        raise argparse.ArgumentTypeError(f"gallery sizes must be integers of at least 16, got {text!r}")
    return values


def _retention_days(text: str) -> int:
    value = _positive_int(text)
    if value > _MAX_RETENTION_DAYS:
        raise argparse.ArgumentTypeError(f"retention is at most {_MAX_RETENTION_DAYS} days, got {value}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate such as 1e-4, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a rate must lie strictly between 0 and 1, got {text!r}")
    return value


# -- helpers ------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _note(message: str) -> None:
    print(f"fpmatch: {message}", file=sys.stderr)


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _load_array(path: str, what: str) -> np.ndarray:
    """One array from a .npy file (no pickles)."""
    try:
        value = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CliError(f"{what} file not found: {path}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise CliError(f"cannot read {what} file {path} as .npy: {_one_line(exc)}") from None
    if not isinstance(value, np.ndarray):
        close = getattr(value, "close", None)
        if close is not None:
            close()
        raise CliError(f"{what} file {path} is an .npz archive; save a single array with np.save")
    return value


def _load_templates(path: str, what: str, *, single: bool) -> np.ndarray:
    """Float32 templates from .npy: one (d,) or (1, d) when ``single``, else (n, d). Never cast."""
    array = _load_array(path, what)
    if array.dtype != np.float32:
        raise CliError(
            f"{what} file {path} holds {array.dtype} values; fpmatch needs float32 and never casts "
            "(save np.asarray(x, dtype=np.float32))"
        )
    if single:
        if array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 1:
            raise CliError(f"{what} file {path} must hold one template, shape (d,) or (1, d); got {array.shape}")
    elif array.ndim != 2 or array.shape[0] < 1:
        raise CliError(f"{what} file {path} must hold templates of shape (n, d); got {array.shape}")
    return np.ascontiguousarray(array)


def _read_subjects(path: str) -> list[tuple[int, str]]:
    """(line number, subject) for every non-blank line, ends stripped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise CliError(f"subjects file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"subjects file {path} is not UTF-8 text: {exc.reason}") from None
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]


# -- the three parties ----------------------------------------------------------


def _he() -> Any:
    """The encrypted schemes' package, or a CliError saying what to install."""
    try:
        from . import he
    except ImportError:
        raise CliError(
            "the hybrid and he schemes need TenSEAL (pip install 'fpmatch[he]'); "
            "a store created with --scheme hash does without it"
        ) from None
    return he


def _load_keyholder(path: str) -> Any:
    he = _he()
    # One local command for one operator: the key holder's per-caller request budget (there to
    # slow a remote caller probing the secret key) would only cut a batch short here.
    local = he.RateLimit(requests_per_second=1e9, burst=10**9)
    return he.KeyHolder.load(path, limits=local)


def _loaders() -> dict[str, Callable[[str], Any]]:
    return {"edge": HashKey.load, "service": ServiceKey.load, "keyholder": _load_keyholder}


def _load_key(args: argparse.Namespace, kind: str, why: str = "") -> Any:
    """The key file of one party, named by its option or environment variable."""
    option, variable, what = _KEY_KINDS[kind]
    path = getattr(args, option.lstrip("-").replace("-", "_"))
    if path is None:
        raise CliError(
            f"no {what}{why}: pass {option} FILE or set {variable} "
            f"(create one with `fpmatch keys new --kind {kind} FILE`)"
        )
    if not Path(path).is_file():
        raise CliError(f"{what} file not found: {path} ({option})")
    loaders = _loaders()
    try:
        return loaders[kind](path)
    except KeyFileError as exc:
        for other, load in loaders.items():  # name the file's real kind and the option it belongs to
            if other == kind:
                continue
            try:
                load(path)
            except (KeyFileError, CliError):
                continue
            raise CliError(
                f"{path} holds the {_KEY_KINDS[other][2]}, not the {what}: pass it with {_KEY_KINDS[other][0]}"
            ) from exc
        raise CliError(f"{option}: {_one_line(exc)}") from exc


def _outside(path: str, directory: Path, what: str) -> None:
    """Refuse a key file inside the store directory (a copied store must not carry it)."""
    key = Path(path).resolve()
    store = directory.resolve()
    if key == store or store in key.parents:
        raise CliError(f"the {what} file {key} is inside the store directory {store}; keep keys elsewhere")


def _stored_profile(directory: Path, service_key: ServiceKey) -> EdgeProfile:
    store = Store.open(directory, service_key)
    try:
        return store.settings.profile
    finally:
        store.close()


def _check_scheme(scheme: str) -> None:
    if scheme == "he":
        raise CliError(
            "the matching service does not run the he scheme yet; use --scheme hybrid (the default: "
            "encrypted decisions on a code shortlist) or --scheme hash"
        )


def _capture_edge(args: argparse.Namespace, directory: Path, profile: EdgeProfile, holder: Any) -> CaptureEdge:
    """The capture edge for ``profile`` from the hash key file, checked against it."""
    if profile.narrow_cone:
        raise CliError(
            f"{directory} takes templates from an edge that removes a model offset; the command line "
            "cannot rebuild that edge (the offset is not stored): use fpmatch.CaptureEdge(..., offset=...)"
        )
    key = _load_key(args, "edge", " (the capture edge protects templates)")
    ensure_outside(key, directory)
    edge = CaptureEdge(
        key,
        profile.dim,
        scheme=profile.scheme,
        public_context=None if holder is None else holder.public_context(),
        bits=profile.bits or DEFAULT_BITS,
        hash_scheme=profile.hash_scheme or HASH_SCHEME,
    )
    if edge.profile.profile_id != profile.profile_id:
        if edge.profile.edge_key_id != profile.edge_key_id:
            raise CliError(
                f"the hash key {args.key} (key id {edge.profile.edge_key_id}) is not the one {directory}'s "
                f"templates were made under ({profile.edge_key_id}): pass that capture-edge key with --key"
            )
        raise CliError(
            f"a capture edge made from these keys does not match {directory} "
            f"(profile {edge.profile.profile_id}, the store takes {profile.profile_id})"
        )
    return edge


@dataclass
class _Parties:
    service: MatchingService
    edge: CaptureEdge | None  # only for commands that take templates
    purged: list[str]


@contextmanager
def _session(
    args: argparse.Namespace, *, edge: bool = False, announce_purge: bool = True
) -> Iterator[_Parties]:
    """Open the store named on the command line, with the parties the command needs.

    A new store needs all three keys (the edge's profile is fixed at creation);
    an existing one needs the service key, the key holder's for encrypted
    schemes, and the hash key only when ``edge`` (templates to protect).
    """
    if args.store is None:
        raise CliError("no store: pass --store DIR or set FPMATCH_STORE")
    directory = Path(args.store)
    service_key = _load_key(args, "service")
    creating = not (directory / DATABASE).exists()
    if creating:
        if args.dim is None:
            raise CliError(f"no fpmatch store in {directory}; pass --dim D (the template dimension) to create one")
        scheme = args.scheme or DEFAULT_SCHEME
        _check_scheme(scheme)
        ensure_outside(service_key, directory)
        holder = None
        if scheme in ("he", "hybrid"):
            why = f" (a new store runs the {scheme} scheme unless --scheme says otherwise)"
            holder = _load_key(args, "keyholder", why)
            _outside(args.keyholder_key, directory, "key holder's key")
        key = _load_key(args, "edge", " (a new store takes the capture edge's profile)")
        ensure_outside(key, directory)
        context = None if holder is None else holder.public_context()
        capture = CaptureEdge(key, args.dim, scheme=scheme, public_context=context, bits=args.bits or DEFAULT_BITS)
        profile = capture.profile
    else:
        profile = _stored_profile(directory, service_key)
        given = {
            "--dim": (args.dim, profile.dim),
            "--bits": (args.bits, profile.bits),
            "--scheme": (args.scheme, profile.scheme),
        }
        for option, (value, stored) in given.items():
            if value is not None and value != stored:
                raise CliError(
                    f"{directory} takes {profile.dim}-D templates, scheme {profile.scheme}"
                    + (f", {profile.bits}-bit codes" if profile.bits else "")
                    + f"; {option} applies only when creating a store"
                )
        _check_scheme(profile.scheme)
        holder = None
        if profile.encrypted:
            holder = _load_key(args, "keyholder", f" ({directory} runs the {profile.scheme} scheme)")
            _outside(args.keyholder_key, directory, "key holder's key")
            if holder.key_id != profile.he_key_id:
                raise CliError(
                    f"the key holder's key {args.keyholder_key} (key id {holder.key_id}) is not the one "
                    f"{directory}'s templates are encrypted under ({profile.he_key_id}): pass that with --keyholder-key"
                )
        capture = _capture_edge(args, directory, profile, holder) if edge else None
    service = MatchingService.open(
        directory, service_key, edge=profile if creating else None, keyholder=holder, purge_on_open=False
    )
    try:
        purged = service.expire()
        if purged and announce_purge:
            shown = ", ".join(purged[:5]) + (", ..." if len(purged) > 5 else "")
            _note(f"erased {len(purged)} subject(s) whose consent lapsed: {shown}")
        yield _Parties(service, capture if edge else None, purged)
    except NotCalibratedError as exc:
        raise CliError(f"{_one_line(exc)}; see `fpmatch calibrate --help`") from exc
    finally:
        service.close()


# -- commands -----------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    if args.probes > args.subjects:
        raise CliError(f"--probes ({args.probes}) cannot exceed --subjects ({args.subjects})")
    run(args.subjects, args.probes, args.seed, profiles=args.profile or ("centred", "offset"))
    return 0


#: `fpmatch bench` settings, and those of `--quick` (options given explicitly win).
_BENCH_FULL = {"n": 2000, "nonmated": 10_000, "sizes": [1000, 10_000], "queries": 100, "linkage_pairs": 1_000_000,
               "max_impostors": 4_000_000, "he_probes": 2000, "he_nonmated": 10_000,
               "hybrid_impostor_pairs": 300_000}  # fmt: skip
_BENCH_QUICK = {"n": 400, "nonmated": 1000, "sizes": [1000], "queries": 20, "linkage_pairs": 50_000,
                "max_impostors": 200_000, "he_probes": 150, "he_nonmated": 400,
                "hybrid_impostor_pairs": 10_000}  # fmt: skip


def _cmd_bench(args: argparse.Namespace) -> int:
    from .eval import (
        EncryptedSizes,
        report_summary,
        report_text,
        run_evaluation,
        speed_vs_gallery_size,
        write_report_pngs,
    )

    preset = _BENCH_QUICK if args.quick else _BENCH_FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.he_probes < 2:
        raise CliError("--he-probes must be at least 2")
    if args.n < 2:
        raise CliError("--n must be at least 2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = progress_bars(args.progress)
    profiles = args.profile or ["centred", "offset"]
    encrypted = None
    if not args.no_encrypted:
        encrypted = EncryptedSizes(
            probes=args.he_probes, nonmated=args.he_nonmated, hybrid_impostor_pairs=args.hybrid_impostor_pairs
        )
    report = run_evaluation(
        args.n,
        profiles=profiles,
        seed=args.seed,
        bits=args.bits,
        max_impostors=args.max_impostors,
        nonmated_searches=args.nonmated,
        linkage_pairs=args.linkage_pairs,
        encrypted=encrypted,
        progress=bar,
    )
    report["speed"] = {
        profile: speed_vs_gallery_size(
            args.sizes,
            profile=profile,
            seed=args.seed,
            bits=args.bits,
            queries=args.queries,
            encrypted_max_n=0 if args.no_encrypted else max(args.sizes),
            progress=bar,
        )
        for profile in profiles
    }
    report["parameters"] = {
        "n": args.n,
        "nonmated_searches": args.nonmated,
        "profiles": profiles,
        "sizes": sorted(set(args.sizes)),
        "queries": args.queries,
        "linkage_pairs": args.linkage_pairs,
        "max_impostors": args.max_impostors,
        "encrypted": None if encrypted is None else {
            "probes": encrypted.probes,
            "nonmated": encrypted.nonmated,
            "hybrid_impostor_pairs": encrypted.hybrid_impostor_pairs,
            "shortlist": encrypted.shortlist,
        },
        "bits": args.bits,
        "seed": args.seed,
        "quick": args.quick,
    }
    report["summary"] = report_summary(report)
    plots = write_report_pngs(report, out)
    notes = list(report["notes"])
    for speed in report["speed"].values():
        notes.extend(speed["notes"])
    if any(path is None for path in plots.values()):
        notes.append("matplotlib is not installed: no plots were drawn (pip install matplotlib)")
    report["notes"] = list(dict.fromkeys(notes))
    report["files"] = {"report": "report.json"}
    report["files"].update({name: f"{name}.png" if path else None for name, path in plots.items()})
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")

    print(report_text(report))
    for note in report["notes"]:
        _note(note)
    drawn = [f"{name}.png" for name, path in plots.items() if path]
    print(f"wrote {out / 'report.json'}" + (f" and {', '.join(drawn)}" if drawn else ""))
    return 0


def _cmd_keys_new(args: argparse.Namespace) -> int:
    target = Path(args.out)
    if target.exists() or target.is_symlink():
        raise CliError(f"{target} exists; refusing to overwrite a key (what was protected under it would be lost)")
    if args.kind == "keyholder":
        holder = _he().KeyHolder()
        holder.save(target)
        print(f"wrote the key holder's CKKS secret key {holder.key_id} to {target} (mode 0600)")
        print("only the key holder reads it; back it up: encrypted templates are useless without it")
        return 0
    key = (HashKey if args.kind == "edge" else ServiceKey).generate()
    key.save(target)
    if args.kind == "edge":
        print(f"wrote the capture edge's hash key {key.key_id} to {target} (mode 0600)")
        print("keep it at the capture edge, never with the matching service or in a store directory;")
        print("back it up: stored codes are useless without it")
    else:
        print(f"wrote the matching service's key {key.key_id} to {target} (mode 0600)")
        print("keep it outside every store directory and back it up: the store cannot be opened without it")
    return 0


def _cmd_consent_grant(args: argparse.Namespace) -> int:
    with _session(args) as parties:
        record = parties.service.grant_consent(
            args.subject,
            args.purpose,
            notice_version=args.notice_version,
            evidence_ref=args.evidence,
            method=args.method,
            separate=True,
            retention=timedelta(days=args.retention_days),
        )
    print(json.dumps(record.to_dict(), sort_keys=True))
    return 0


def _cmd_consent_withdraw(args: argparse.Namespace) -> int:
    with _session(args) as parties:
        service = parties.service
        pending = [r for r in service.consents(args.subject) if r.withdrawn_at is None]
        erased = service.withdraw(args.subject, args.consent_id)
        still_enrolled = args.subject in service
    if not pending:
        print(f"{args.subject}: no consent to withdraw (the request is in the audit log)")
        return 0
    count = 1 if args.consent_id else len(pending)
    if erased:
        held = "protected template erased"
    elif still_enrolled:
        held = "still enrolled under another active consent"
    else:
        held = "no template was held"
    print(f"{args.subject}: withdrew {count} consent record(s); {held}")
    return 0


def _cmd_consent_show(args: argparse.Namespace) -> int:
    with _session(args) as parties:
        report = parties.service.subject_report(args.subject)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _refused_lines(service: MatchingService, lines: Sequence[tuple[int, str]]) -> list[tuple[int, str, str]]:
    """(line, subject, why) for each subject of a refused batch that the service would refuse."""
    now = system_clock()
    refused = []
    for number, name in lines:
        if name in service:
            refused.append((number, name, "already enrolled (--skip-enrolled skips such subjects)"))
        elif not any(record.active(now) for record in service.consents(name)):
            refused.append((number, name, "no active consent; record one before enrolment"))
    return refused


def _cmd_enrol(args: argparse.Namespace) -> int:
    single_parts = (args.subject, args.template)
    batch_parts = (args.batch, args.templates)
    single = all(p is not None for p in single_parts) and all(p is None for p in batch_parts)
    if not single and not (all(p is not None for p in batch_parts) and all(p is None for p in single_parts)):
        args.parser.error("give SUBJECT --template FILE.npy, or --batch SUBJECTS.txt --templates FILE.npy")
    if single:
        template = _load_templates(args.template, "template", single=True)
        with _session(args, edge=True) as parties:
            if args.skip_enrolled and args.subject in parties.service:
                print(f"{args.subject}: already enrolled, skipped")
                return 0
            assert parties.edge is not None
            parties.service.enrol(args.subject, parties.edge.enrolment(template))
        print(f"{args.subject}: enrolled")
        return 0

    subjects = _read_subjects(args.batch)
    rows = _load_templates(args.templates, "templates", single=False)
    if len(subjects) != len(rows):
        raise CliError(
            f"{args.batch} names {len(subjects)} subject(s) but {args.templates} holds {len(rows)} template(s)"
        )
    seen: dict[str, int] = {}
    for number, name in subjects:
        if name in seen:
            raise CliError(f"{args.batch} line {number}: {name!r} repeats line {seen[name]}")
        seen[name] = number
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1) | ~(rows != 0).any(axis=1))
    if len(bad):
        number, name = subjects[int(bad[0])]
        raise CliError(f"{args.templates} row {int(bad[0])} ({name!r}, line {number}) holds NaN/Inf or is all zeros")
    enrolled = skipped = 0
    with _session(args, edge=True) as parties:
        service, edge = parties.service, parties.edge
        assert edge is not None
        if rows.shape[1] != edge.dim:
            raise CliError(f"{args.templates} holds {rows.shape[1]}-D templates; this store takes {edge.dim}-D")
        with progress_bars(args.progress)("enrolling", len(rows)) as bar:
            for start in range(0, len(rows), ENROL_CHUNK):
                chunk = list(range(start, min(start + ENROL_CHUNK, len(rows))))
                if args.skip_enrolled:
                    todo = [i for i in chunk if subjects[i][1] not in service]
                    skipped += len(chunk) - len(todo)
                else:
                    todo = chunk
                if todo:
                    lines = [subjects[i] for i in todo]
                    try:  # one transaction per chunk: a refused subject leaves the whole chunk out
                        service.enrol_many([name for _, name in lines], edge.enrolments(rows[todo]))
                    except FpmatchError as exc:
                        raise CliError(_batch_error(args.batch, service, lines, exc, enrolled)) from exc
                    enrolled += len(todo)
                bar.update(len(chunk))
    print(f"enrolled {enrolled} subject(s)" + (f", skipped {skipped} already enrolled" if skipped else ""))
    return 0


def _batch_error(
    batch: str, service: MatchingService, lines: Sequence[tuple[int, str]], exc: FpmatchError, enrolled: int
) -> str:
    span = f"line {lines[0][0]}" if len(lines) == 1 else f"lines {lines[0][0]}-{lines[-1][0]}"
    outcome = f"nobody on {span} was enrolled, {enrolled} before them were"
    refused = _refused_lines(service, lines) if isinstance(exc, (ConsentRequiredError, IdConflictError)) else []
    if not refused:
        return f"{batch} {span}: {_one_line(exc)} ({outcome})"
    number, name, why = refused[0]
    more = f"; {len(refused) - 1} more refused on later lines" if len(refused) > 1 else ""
    return f"{batch} line {number} ({name!r}): {why}{more} ({outcome})"


def _cmd_calibrate(args: argparse.Namespace) -> int:
    if (args.templates is None) != (args.labels is None):
        args.parser.error("give both --templates and --labels, or neither")
    templates = labels = None
    if args.templates is not None:
        templates = _load_templates(args.templates, "templates", single=False)
        labels = _load_array(args.labels, "labels")
        if labels.ndim != 1 or len(labels) != len(templates):
            raise CliError(f"labels must be 1-D with one label per template ({len(templates)}); got {labels.shape}")
    with _session(args, edge=templates is not None) as parties:
        service = parties.service
        if parties.edge is not None:
            fmr = service.target_fmr if args.target_fmr is None else args.target_fmr
            calibration = parties.edge.calibration(templates, labels, fmr, max_pairs=args.max_pairs)
            score = service.calibrate(calibration=calibration)
        else:
            score = service.calibrate(args.target_fmr, max_pairs=args.max_pairs)
        fmr = service.target_fmr
        unit = "cosine" if service.profile.encrypted else "score"
    source = "labelled templates, at the capture edge" if templates is not None else "enrolled codes"
    print(f"threshold: {unit} >= {score:.4f} for a false-match rate of {fmr:g} (from {source})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    probe = _load_templates(args.probe, "probe", single=True)
    with _session(args, edge=True) as parties:
        assert parties.edge is not None
        outcome = parties.service.verify(args.subject, parties.edge.probe(probe), args.purpose)
    print(outcome.value)
    return VERIFY_STATUS[outcome] if args.exit_code else 0


def _cmd_identify(args: argparse.Namespace) -> int:
    probe = _load_templates(args.probe, "probe", single=True)
    with _session(args, edge=True) as parties:
        assert parties.edge is not None
        candidates = parties.service.identify(parties.edge.probe(probe), args.purpose, k=args.k)
    for candidate in candidates:
        print(json.dumps({"rank": candidate.rank, "subject": candidate.subject}))
    if not candidates:
        _note("no match")
    return (0 if candidates else 1) if args.exit_code else 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    with _session(args) as parties:
        report = parties.service.audit_verify()
    if report.ok:
        print(report.message)
        return 0
    _note(f"audit chain broken: {report.message}")
    return 1


def _cmd_audit_export(args: argparse.Namespace) -> int:
    to_stdout = args.out == "-"
    target = Path(args.out)
    if not to_stdout and not args.force and (target.exists() or target.is_symlink()):
        raise CliError(f"{target} exists; pass --force to overwrite it")
    with _session(args) as parties:
        service = parties.service
        report = service.audit_verify()
        if to_stdout:
            count = service.export_audit(sys.stdout)
        else:
            with open(target, "w" if args.force else "x", encoding="utf-8", newline="\n") as f:
                count = service.export_audit(f)
    if not to_stdout:
        print(f"exported {count} audit entries to {target}")
    if not report.ok:
        _note(f"warning: the exported chain does not verify: {report.message}")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    with _session(args, announce_purge=False) as parties:
        purged = parties.purged
    for subject in purged:
        print(subject)
    _note(f"purged {len(purged)} subject(s) whose consent lapsed" if purged else "nothing to purge")
    return 0


# -- parser -------------------------------------------------------------------


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _command(
    group: Any, name: str, summary: str, handler: Handler, examples: Sequence[str], details: str = ""
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name,
        help=summary,
        description=summary + (f"\n\n{details}" if details else ""),
        epilog=_examples(*examples),
        formatter_class=_FORMATTER,
    )
    parser.set_defaults(handler=handler, parser=parser)
    return parser


def _group(group: Any, name: str, summary: str, examples: Sequence[str]) -> Any:
    parser: argparse.ArgumentParser = group.add_parser(
        name, help=summary, description=summary, epilog=_examples(*examples), formatter_class=_FORMATTER
    )
    return parser.add_subparsers(dest="action", metavar="ACTION", required=True)


def _store_options(parser: argparse.ArgumentParser) -> None:
    options = parser.add_argument_group(
        "store and parties",
        _ROLES + "\nHere the key holder serves one local command, so its per-caller request rate limit\n"
        "(there against remote callers probing its key) is lifted.",
    )
    options.add_argument(
        "--store", metavar="DIR", default=_env("FPMATCH_STORE"), help="store directory (default: $FPMATCH_STORE)"
    )
    options.add_argument(
        "--key",
        metavar="FILE",
        default=_env("FPMATCH_KEY"),
        help="capture edge: hash (transform) key file; needed to create a store and for commands "
        "that take templates (default: $FPMATCH_KEY)",
    )
    options.add_argument(
        "--service-key",
        metavar="FILE",
        default=_env("FPMATCH_SERVICE_KEY"),
        help="matching service: its own key file, kept outside the store (default: $FPMATCH_SERVICE_KEY)",
    )
    options.add_argument(
        "--keyholder-key",
        metavar="FILE",
        default=_env("FPMATCH_KEYHOLDER_KEY"),
        help="key holder: CKKS secret key file; needed for hybrid and he stores (default: $FPMATCH_KEYHOLDER_KEY)",
    )
    options.add_argument(
        "--scheme",
        choices=SCHEMES,
        help=f"protection scheme of a new store (default {DEFAULT_SCHEME}; the matching service does not run "
        "he yet); an existing store keeps its own",
    )
    options.add_argument(
        "--dim", type=_positive_int, metavar="D", help="template dimension; needed only to create a new store"
    )
    options.add_argument(
        "--bits", type=_positive_int, metavar="B", help=f"code length when creating a store (default {DEFAULT_BITS})"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``fpmatch`` argument parser (environment defaults are read now)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fpmatch",
        description="Privacy-preserving face matching over protected templates.\n\n" + _ROLES,
        epilog=_examples(
            "fpmatch keys new ~/keys/edge.key",
            "fpmatch keys new --kind service ~/keys/service.key",
            "fpmatch keys new --kind keyholder ~/keys/keyholder.key",
            "export FPMATCH_STORE=/srv/faces FPMATCH_KEY=~/keys/edge.key \\",
            "    FPMATCH_SERVICE_KEY=~/keys/service.key FPMATCH_KEYHOLDER_KEY=~/keys/keyholder.key",
            "fpmatch consent grant alice --purpose payment --notice-version 2026-01 \\",
            "    --evidence form-81 --method signed-form --retention-days 365 --dim 512",
            "fpmatch enrol alice --template alice.npy",
            "fpmatch calibrate --target-fmr 1e-4 --templates labelled.npy --labels labels.npy",
            "fpmatch verify alice --probe probe.npy --purpose payment",
        )
        + "\n\nexit status: 0 ran (see verify/identify --exit-code), 1 audit chain broken, 2 error.\n"
        "FPMATCH_DEBUG=1 shows a traceback on errors.",
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"fpmatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = _command(
        commands,
        "demo",
        "Run the default deployment (key holder, capture edge, matching service) on synthetic faces.",
        _cmd_demo,
        ["fpmatch demo", "fpmatch demo --subjects 5000 --probes 500 --profile centred"],
        "Creates the three parties' keys and a store in a temporary directory, records consent,\n"
        "enrols in batches, calibrates at the edge from labelled templates, verifies and identifies\n"
        "mated and non-mated probes, withdraws a subject, and prints the figures. The hybrid scheme\n"
        "needs TenSEAL; without it the demo runs the hash scheme and says so.",
    )
    demo.add_argument("--subjects", type=_positive_int, default=2000, help="subjects per profile (default 2000)")
    demo.add_argument(
        "--probes", type=_positive_int, default=200, help="mated and non-mated probes per profile (default 200)"
    )
    demo.add_argument(
        "--profile",
        action="append",
        choices=["centred", "offset"],
        help="synthetic model: centred (512-D) or offset (dlib-like, 128-D); repeat for both (default both)",
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed of the synthetic faces (default 7)")

    bench = _command(
        commands,
        "bench",
        "Evaluate plain cosine and the hash, he and hybrid schemes on synthetic faces; write a report directory.",
        _cmd_bench,
        ["fpmatch bench", "fpmatch bench --quick --out /tmp/bench", "fpmatch bench --out eval --profile offset"],
        "Per profile: TAR at FAR 1e-3 and 1e-4, EER, rank-1, open-set FNIR at FPIR 3e-3 (plain, hash, and the\n"
        "encrypted he and hybrid schemes on a part of the pairs, plain beside them on the same part),\n"
        "unlinkability (D_sys) and renewability under a second key, irreversibility (templates rebuilt\n"
        "from the codes with and without the key), and enrolment, verify and identify speed against\n"
        "gallery size. A rate the trials cannot support (fewer than 30 errors allowed at it) is null.\n"
        "Writes report.json, det.png, unlinkability.png and speed.png (plots need matplotlib; he and\n"
        "hybrid need TenSEAL). About 8 minutes on 2 cores; --quick well under one. For larger runs,\n"
        "benchmarks/bench_eval.py.",
    )
    bench.add_argument(
        "-o", "--out", metavar="DIR", default="fpmatch-bench", help="report directory (default fpmatch-bench)"
    )
    bench.add_argument("--quick", action="store_true", help="a smoke run at small sizes (explicit options win)")
    bench.add_argument("--n", type=_positive_int, help="identities in the gallery (default 2000; quick 400)")
    bench.add_argument(
        "--nonmated", type=_positive_int, help="non-mated 1:N searches (default 10000, enough for FPIR 3e-3)"
    )
    bench.add_argument(
        "--profile",
        action="append",
        choices=["centred", "offset"],
        help="synthetic profile; repeat for several (default both)",
    )
    bench.add_argument("--seed", type=int, default=0, help="random seed; the key derives from it too (default 0)")
    bench.add_argument("--bits", type=_positive_int, default=1024, help="code length (default 1024)")
    bench.add_argument("--max-impostors", type=_positive_int, help="cap on impostor pairs per profile (default 4e6)")
    bench.add_argument("--linkage-pairs", type=_positive_int, help="non-mated pairs for D_sys (default 1e6)")
    bench.add_argument(
        "--sizes", type=_size_list, help="gallery sizes of the speed curve, comma-separated (default 1000,10000)"
    )
    bench.add_argument("--queries", type=_positive_int, help="timed queries per gallery size (default 100)")
    bench.add_argument("--he-probes", type=_positive_int, help="mated probes he and hybrid score (default 2000)")
    bench.add_argument("--he-nonmated", type=_positive_int, help="non-mated searches of he and hybrid (default 10000)")
    bench.add_argument(
        "--hybrid-impostor-pairs", type=_positive_int, help="impostor pairs through hybrid's 1:1 path (default 3e5)"
    )
    bench.add_argument("--no-encrypted", action="store_true", help="leave out the he and hybrid schemes")
    bench.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")

    keys = _group(
        commands, "keys", "Create key files for the capture edge, the matching service and the key holder.",
        ["fpmatch keys new ~/keys/edge.key", "fpmatch keys new --kind keyholder ~/keys/keyholder.key"],
    )  # fmt: skip
    keys_new = _command(
        keys, "new", "Write a new random key of one party to a new file (mode 0600).", _cmd_keys_new,
        [
            "fpmatch keys new ~/keys/edge.key",
            "fpmatch keys new --kind service ~/keys/service.key",
            "fpmatch keys new --kind keyholder ~/keys/keyholder.key",
        ],
        "edge: the capture edge's hash (transform) key (--key); service: the matching service's own\n"
        "key (--service-key); keyholder: the key holder's CKKS secret key (--keyholder-key, needs\n"
        "TenSEAL). Each party holds only its own. Refuses to overwrite an existing file; keep every\n"
        "key outside every store directory.",
    )  # fmt: skip
    keys_new.add_argument("out", metavar="OUT", help="key file to create")
    keys_new.add_argument(
        "--kind", choices=list(_KEY_KINDS), default="edge", help="whose key to create (default edge)"
    )

    consent = _group(
        commands, "consent", "Record, withdraw and show consent.",
        ["fpmatch consent grant alice --purpose payment ...", "fpmatch consent show alice"],
    )  # fmt: skip
    grant = _command(
        consent,
        "grant",
        "Record a subject's separate consent to biometric matching for named purposes.",
        _cmd_consent_grant,
        [
            "fpmatch consent grant alice --purpose payment --purpose entry \\",
            "    --notice-version 2026-01 --evidence form-81 --method signed-form --retention-days 365",
        ],
        "Only separate consent can be recorded here: use this command only when the subject agreed\n"
        "to biometric matching apart from any other terms. Bundled consent cannot authorise it.\n"
        "Prints the consent record as JSON (its consent_id is what `withdraw --consent-id` takes).",
    )
    grant.add_argument("subject", metavar="SUBJECT")
    grant.add_argument(
        "--purpose", action="append", required=True, help="a purpose such as payment or entry; repeat for several"
    )
    grant.add_argument("--notice-version", required=True, metavar="V", help="version of the privacy notice shown")
    grant.add_argument("--evidence", required=True, metavar="REF", help="reference to the proof kept elsewhere")
    grant.add_argument("--method", required=True, metavar="M", help="how consent was given, e.g. signed-form, in-app")
    grant.add_argument(
        "--retention-days",
        required=True,
        type=_retention_days,
        metavar="N",
        help="consent term in days; the code is erased when it ends",
    )
    _store_options(grant)
    withdraw = _command(
        consent,
        "withdraw",
        "Withdraw a subject's consent; with none left active, their code is erased at once.",
        _cmd_consent_withdraw,
        ["fpmatch consent withdraw alice", "fpmatch consent withdraw alice --consent-id 3f2a..."],
    )
    withdraw.add_argument("subject", metavar="SUBJECT")
    withdraw.add_argument("--consent-id", metavar="ID", help="withdraw only this record (default: all of them)")
    _store_options(withdraw)
    show = _command(
        consent,
        "show",
        "Print what the store holds about a subject as JSON (consents, audit events; never template bytes).",
        _cmd_consent_show,
        ["fpmatch consent show alice"],
    )
    show.add_argument("subject", metavar="SUBJECT")
    _store_options(show)

    enrol = _command(
        commands,
        "enrol",
        "Enrol subjects from float32 .npy templates (each needs an active consent).",
        _cmd_enrol,
        ["fpmatch enrol alice --template alice.npy", "fpmatch enrol --batch subjects.txt --templates templates.npy"],
        "The capture edge (--key) protects each template and drops it; the matching service stores\n"
        "only the protected record (code, and for hybrid the template encrypted under a secret\n"
        "rotation). A single template is (d,) or (1, d). A batch pairs line i of SUBJECTS.txt (blank\n"
        "lines skipped) with row i of an (n, d) array. It is checked whole first, then enrolled in\n"
        f"transactions of {ENROL_CHUNK:,} subjects: a refused subject (no active consent, already\n"
        "enrolled) leaves its whole transaction out; the error names its line and how many went in.",
    )
    enrol.add_argument("subject", nargs="?", metavar="SUBJECT")
    enrol.add_argument("--template", metavar="FILE.npy", help="one template, shape (d,) or (1, d)")
    enrol.add_argument("--batch", metavar="SUBJECTS.txt", help="one subject name per line")
    enrol.add_argument("--templates", metavar="FILE.npy", help="(n, d) templates, one row per subject line")
    enrol.add_argument("--skip-enrolled", action="store_true", help="skip subjects already enrolled instead of failing")
    enrol.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a terminal")
    _store_options(enrol)

    calibrate = _command(
        commands,
        "calibrate",
        "Set the decision threshold for a target false-match rate.",
        _cmd_calibrate,
        [
            "fpmatch calibrate --target-fmr 1e-4",
            "fpmatch calibrate --target-fmr 1e-3 --templates labelled.npy --labels labels.npy",
        ],
        "With --templates the capture edge (--key) scores impostor pairs of labelled templates from\n"
        "the same model (two or more per person, enrolled or not) as the service will decide them\n"
        "(plain cosines for hybrid, probe-weighted code scores for hash) and hands the service only\n"
        "the threshold. Without, the impostor pairs come from the enrolled codes (a few hundred\n"
        "subjects are needed for 1e-4). verify and identify calibrate from codes on first use.",
    )
    calibrate.add_argument("--target-fmr", type=_rate, metavar="FMR", help="default: the store's current target (1e-4)")
    calibrate.add_argument("--templates", metavar="FILE.npy", help="labelled float32 templates, shape (n, d)")
    calibrate.add_argument("--labels", metavar="FILE.npy", help="1-D array: the person of each template")
    calibrate.add_argument(
        "--max-pairs",
        type=_positive_int,
        default=2_000_000,
        help="impostor pairs to draw, at least 10/FMR (default 2e6; fewer use less memory with --templates)",
    )
    _store_options(calibrate)

    verify = _command(
        commands,
        "verify",
        "1:1: print match, no_match or use_alternative for a subject and a probe.",
        _cmd_verify,
        [
            "fpmatch verify alice --probe probe.npy --purpose payment",
            "fpmatch verify alice --probe probe.npy --purpose entry --exit-code || open-pin-pad",
        ],
        "The capture edge (--key) protects the probe and drops it; the matching service decides (for\n"
        "hybrid, the key holder compares the encrypted score with the threshold).\n"
        "use_alternative means no active consent covers the purpose (or the subject is not enrolled):\n"
        "send the person to the non-biometric method; it is not a rejection. The exit status is 0\n"
        "whenever the request ran; with --exit-code it is 0 match, 1 no_match, 3 use_alternative.",
    )
    verify.add_argument("subject", metavar="SUBJECT")
    verify.add_argument("--probe", required=True, metavar="FILE.npy", help="one float32 template, (d,) or (1, d)")
    verify.add_argument("--purpose", required=True, help="the purpose of this request, e.g. payment")
    verify.add_argument("--exit-code", action="store_true", help="exit 0 match, 1 no_match, 3 use_alternative")
    _store_options(verify)

    identify = _command(
        commands,
        "identify",
        "1:N: print the matching subjects whose consent covers the purpose, best first, as JSON lines.",
        _cmd_identify,
        ["fpmatch identify --probe probe.npy --purpose entry -k 3"],
        'Each line is {"rank": 1, "subject": "..."}: no score leaves the service (for hybrid the key\n'
        "holder only says which shortlisted subjects pass the threshold, best first). Nothing is\n"
        "printed when nobody matches; with --exit-code the status is 1 then.",
    )
    identify.add_argument("--probe", required=True, metavar="FILE.npy", help="one float32 template, (d,) or (1, d)")
    identify.add_argument("--purpose", required=True, help="the purpose of this request, e.g. entry")
    identify.add_argument("-k", type=_positive_int, default=5, help="at most this many candidates (default 5)")
    identify.add_argument("--exit-code", action="store_true", help="exit 1 when nobody matches")
    _store_options(identify)

    audit = _group(
        commands, "audit", "Check and export the hash-chained audit log.",
        ["fpmatch audit verify", "fpmatch audit export audit.jsonl"],
    )  # fmt: skip
    audit_verify = _command(
        audit,
        "verify",
        "Verify the audit chain and its keyed head; exit 1 and name the first broken entry if it fails.",
        _cmd_audit_verify,
        ["fpmatch audit verify"],
    )
    _store_options(audit_verify)
    audit_export = _command(
        audit,
        "export",
        "Write the audit log as JSON lines (pseudonyms, never biometric data or scores).",
        _cmd_audit_export,
        ["fpmatch audit export audit.jsonl", "fpmatch audit export - | jq .event"],
    )
    audit_export.add_argument("out", metavar="OUT.jsonl", help="file to create, or - for stdout")
    audit_export.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    _store_options(audit_export)

    purge = _command(
        commands,
        "purge",
        "Erase every subject whose consent lapsed; print their names, one per line.",
        _cmd_purge,
        ["fpmatch purge", "fpmatch purge > purged.txt"],
        "Names, not pseudonyms: the operator holds them already, and the audit log records each purge\n"
        "under the pseudonym. Every store command also purges lapsed subjects when it opens the store\n"
        "(and says so on stderr); this command does only that.",
    )
    _store_options(purge)
    return parser


def _status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    debug = os.environ.get("FPMATCH_DEBUG", "") not in ("", "0")
    try:
        args = parser.parse_args(argv)
        return int(args.handler(args))
    except SystemExit as exc:  # --help, --version and usage errors (2)
        return _status(exc.code)
    except KeyboardInterrupt:
        _note("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `fpmatch audit export - | head`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except (CliError, FpmatchError, OSError, ValueError) as exc:
        if debug:
            raise
        _note(f"error: {_one_line(exc)}")
        return 2
    except Exception as exc:  # a bug: still one line, the traceback on request
        if debug:
            raise
        _note(f"error: unexpected {type(exc).__name__}: {_one_line(exc)} (FPMATCH_DEBUG=1 shows the traceback)")
        return 2


__all__ = ["CliError", "VERIFY_STATUS", "build_parser", "main"]
