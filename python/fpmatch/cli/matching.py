"""``fpmatch enrol``, ``calibrate``, ``verify`` and ``identify``: templates in, decisions out."""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import numpy as np

from .._progress import progress_bars
from ..consent import system_clock
from ..errors import ConsentRequiredError, FpmatchError, IdConflictError
from ..service import MatchingService, VerificationOutcome
from ._common import CliError, add_command, load_array, load_templates, note, one_line, positive_int
from ._parties import session, store_options
from .photos import (
    add_enrol_options,
    add_probe_options,
    cmd_enrol_photos,
    enrolment_records,
    model_calibration,
    probe_input,
    probe_message,
)


#: ``verify --exit-code``: the status for each outcome (2 stays reserved for errors).
VERIFY_STATUS = {
    VerificationOutcome.MATCH: 0,
    VerificationOutcome.NO_MATCH: 1,
    VerificationOutcome.USE_ALTERNATIVE: 3,
}
#: Subjects per transaction in a batch enrolment.
ENROL_CHUNK = 1000


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate such as 1e-4, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a rate must lie strictly between 0 and 1, got {text!r}")
    return value


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
    if args.image is not None or args.images is not None:
        return cmd_enrol_photos(args)
    single_parts = (args.subject, args.template)
    batch_parts = (args.batch, args.templates)
    single = all(p is not None for p in single_parts) and all(p is None for p in batch_parts)
    if not single and not (all(p is not None for p in batch_parts) and all(p is None for p in single_parts)):
        args.parser.error("give SUBJECT --template FILE.npy, or --batch SUBJECTS.txt --templates FILE.npy")
    if single:
        template = load_templates(args.template, "template", single=True)
        with session(args, edge=True) as parties:
            if args.skip_enrolled and args.subject in parties.service:
                print(f"{args.subject}: already enrolled, skipped")
                return 0
            assert parties.edge is not None
            signs = parties.edge.signing_key is not None  # a signing edge signs the record for its subject
            record = parties.edge.enrolment(template, subject=args.subject) if signs else parties.edge.enrolment(template)
            parties.service.enrol(args.subject, record)
        print(f"{args.subject}: enrolled")
        return 0

    subjects = _read_subjects(args.batch)
    rows = load_templates(args.templates, "templates", single=False)
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
    with session(args, edge=True) as parties:
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
                        names = [name for _, name in lines]
                        service.enrol_many(names, enrolment_records(edge, rows[todo], names))
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
        return f"{batch} {span}: {one_line(exc)} ({outcome})"
    number, name, why = refused[0]
    more = f"; {len(refused) - 1} more refused on later lines" if len(refused) > 1 else ""
    return f"{batch} line {number} ({name!r}): {why}{more} ({outcome})"


def _cmd_calibrate(args: argparse.Namespace) -> int:
    if args.face_model:
        if args.templates is not None or args.labels is not None:
            args.parser.error("--face-model takes no --templates or --labels")
        score = model_calibration(args)
        print(f"threshold: cosine >= {score:.4f}, the face model's own decision rule")
        return 0
    if (args.templates is None) != (args.labels is None):
        args.parser.error("give both --templates and --labels, or neither")
    templates = labels = None
    if args.templates is not None:
        templates = load_templates(args.templates, "templates", single=False)
        labels = load_array(args.labels, "labels")
        if labels.ndim != 1 or len(labels) != len(templates):
            raise CliError(f"labels must be 1-D with one label per template ({len(templates)}); got {labels.shape}")
    with session(args, edge=templates is not None) as parties:
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
    probe = probe_input(args)
    with session(args, edge=True) as parties:
        assert parties.edge is not None
        outcome = parties.service.verify(args.subject, probe_message(parties.edge, probe, args, args.subject), args.purpose)
    print(outcome.value)
    return VERIFY_STATUS[outcome] if args.exit_code else 0


def _cmd_identify(args: argparse.Namespace) -> int:
    probe = probe_input(args)
    with session(args, edge=True) as parties:
        assert parties.edge is not None
        candidates = parties.service.identify(probe_message(parties.edge, probe, args), args.purpose, k=args.k)
    for candidate in candidates:
        print(json.dumps({"rank": candidate.rank, "subject": candidate.subject}))
    if not candidates:
        note("no match")
    return (0 if candidates else 1) if args.exit_code else 0


def add_commands(commands: Any) -> None:
    """Register ``enrol``, ``calibrate``, ``verify`` and ``identify``."""
    enrol = add_command(
        commands,
        "enrol",
        "Enrol subjects from float32 .npy templates (each needs an active consent).",
        _cmd_enrol,
        [
            "fpmatch enrol alice --template alice.npy",
            "fpmatch enrol --batch subjects.txt --templates templates.npy",
            "fpmatch enrol alice --image alice.jpg",
        ],
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
    add_enrol_options(enrol)
    enrol.add_argument("--skip-enrolled", action="store_true", help="skip subjects already enrolled instead of failing")
    enrol.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a terminal")
    store_options(enrol)

    calibrate = add_command(
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
        "--face-model", action="store_true", help="the face model's own threshold (stores fed --image photos)"
    )
    calibrate.add_argument(
        "--max-pairs",
        type=positive_int,
        default=2_000_000,
        help="impostor pairs to draw, at least 10/FMR (default 2e6; fewer use less memory with --templates)",
    )
    store_options(calibrate)

    verify = add_command(
        commands,
        "verify",
        "1:1: print match, no_match or use_alternative for a subject and a probe.",
        _cmd_verify,
        [
            "fpmatch verify alice --probe probe.npy --purpose payment",
            "fpmatch verify alice --probe probe.npy --purpose entry --exit-code || open-pin-pad",
            "fpmatch verify alice --image camera.jpg --purpose entry",
        ],
        "The capture edge (--key) protects the probe and drops it; the matching service decides (for\n"
        "hybrid, the key holder compares the encrypted score with the threshold).\n"
        "use_alternative means no active consent covers the purpose (or the subject is not enrolled):\n"
        "send the person to the non-biometric method; it is not a rejection. The exit status is 0\n"
        "whenever the request ran; with --exit-code it is 0 match, 1 no_match, 3 use_alternative.",
    )
    verify.add_argument("subject", metavar="SUBJECT")
    verify.add_argument("--probe", metavar="FILE.npy", help="one float32 template, (d,) or (1, d)")
    add_probe_options(verify)
    verify.add_argument("--purpose", required=True, help="the purpose of this request, e.g. payment")
    verify.add_argument("--exit-code", action="store_true", help="exit 0 match, 1 no_match, 3 use_alternative")
    store_options(verify)

    identify = add_command(
        commands,
        "identify",
        "1:N: print the matching subjects whose consent covers the purpose, best first, as JSON lines.",
        _cmd_identify,
        ["fpmatch identify --probe probe.npy --purpose entry -k 3"],
        'Each line is {"rank": 1, "subject": "..."}: no score leaves the service (for hybrid the key\n'
        "holder only says which shortlisted subjects pass the threshold, best first). Nothing is\n"
        "printed when nobody matches; with --exit-code the status is 1 then.",
    )
    identify.add_argument("--probe", metavar="FILE.npy", help="one float32 template, (d,) or (1, d)")
    add_probe_options(identify)
    identify.add_argument("--purpose", required=True, help="the purpose of this request, e.g. entry")
    identify.add_argument("-k", type=positive_int, default=5, help="at most this many candidates (default 5)")
    identify.add_argument("--exit-code", action="store_true", help="exit 1 when nobody matches")
    store_options(identify)


__all__ = ["ENROL_CHUNK", "VERIFY_STATUS"]
