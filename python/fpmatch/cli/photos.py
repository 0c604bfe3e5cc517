"""Photos on the command line: ``--image`` and ``--images DIR`` wherever a command takes templates.

The command line plays the capture edge, so photos are embedded here by the
face model of :mod:`fpmatch.faces` and only protected messages reach the
matching service. Photo problems (no face, several faces in an enrolment
photo, unreadable or corrupt files) are one-line errors naming the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ._common import CliError, load_templates
from ._parties import session

#: Files ``--images DIR`` takes as photos.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def require_faces() -> Any:
    """The face model's package, or a CliError saying what to install."""
    try:
        from .. import faces

        faces.model_directory()
        import dlib  # noqa: F401
        import PIL  # noqa: F401
    except ImportError:
        raise CliError("photos need the face model: pip install 'fpmatch[faces]'") from None
    return faces


def photo_files(directory: str) -> list[tuple[str, Path]]:
    """(subject, photo) for each photo in ``directory``, the subject named by the file's stem."""
    folder = Path(directory)
    if not folder.is_dir():
        raise CliError(f"--images: {directory} is not a directory")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if not found:
        raise CliError(f"--images: no photos ({', '.join(PHOTO_SUFFIXES)}) in {directory}")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems:
            raise CliError(f"--images: {path.name} and {stems[path.stem].name} name the same subject {path.stem!r}")
        stems[path.stem] = path
    return list(stems.items())


def probe_input(args: argparse.Namespace) -> Any:
    """The probe: a float32 template from --probe, or a photo path from --image (checked to exist)."""
    if (args.probe is None) == (args.image is None):
        args.parser.error("give one of --probe FILE.npy and --image PHOTO")
    if args.image is None:
        return load_templates(args.probe, "probe", single=True)
    require_faces()
    if not Path(args.image).is_file():
        raise CliError(f"photo not found: {args.image}")
    return args.image


def probe_message(edge: Any, probe: Any, args: argparse.Namespace, subject: str | None = None) -> Any:
    """The capture edge's probe message: of a template, or of the chosen face of a photo.

    A signing edge (``--edge-signing-key``) signs it for the command's purpose: a verification of
    ``subject``, or (no subject) an identification.
    """
    signed = {"purpose": args.purpose, "subject": subject, "identify": subject is None} if _signs(edge) else {}
    if isinstance(probe, np.ndarray):
        return edge.probe(probe, **signed)
    return edge.probe(probe, face=args.face, **signed)


def enrolment_records(edge: Any, templates: Any, names: list[str]) -> list[Any]:
    """The capture edge's records of ``templates``, signed for ``names`` by a signing edge."""
    return edge.enrolments(templates, names) if _signs(edge) else edge.enrolments(templates)


def _signs(edge: Any) -> bool:
    return getattr(edge, "signing_key", None) is not None


def cmd_enrol_photos(args: argparse.Namespace) -> int:
    """``enrol SUBJECT --image PHOTO`` or ``enrol --images DIR`` (one subject per photo, named by its file)."""
    if any(v is not None for v in (args.template, args.batch, args.templates)) or (
        (args.image is None) == (args.images is None)
    ):
        args.parser.error("with photos give SUBJECT --image PHOTO, or --images DIR alone")
    if args.image is not None and args.subject is None:
        args.parser.error("--image needs the SUBJECT it enrols")
    if args.images is not None and args.subject is not None:
        args.parser.error("--images DIR names each subject after its photo's file; give no SUBJECT")
    faces = require_faces()
    pairs = [(args.subject, Path(args.image))] if args.image is not None else photo_files(args.images)
    with session(args, edge=True) as parties:
        service, edge = parties.service, parties.edge
        assert edge is not None
        if args.skip_enrolled:
            pairs = [(name, path) for name, path in pairs if name not in service]
        # Every photo is embedded before anything is enrolled: one refused photo enrols nobody.
        templates = [faces.embed(path) for _, path in pairs]
        if templates:
            names = [name for name, _ in pairs]
            service.enrol_many(names, enrolment_records(edge, np.stack(templates), names))
    for name, path in pairs:
        print(f"{name}: enrolled from {path.name}")
    return 0


def add_enrol_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", metavar="PHOTO", help="a photo of the one consenting person (fpmatch[faces])")
    parser.add_argument(
        "--images", metavar="DIR", help="one photo per subject, named SUBJECT.jpg (or .png, ...); all or nobody enrolled"
    )


def add_probe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", metavar="PHOTO", help="a photo instead of --probe (fpmatch[faces])")
    parser.add_argument(
        "--face",
        type=_face_index,
        default=0,
        metavar="N",
        help="which face of the photo to match: 0 the largest (default), 1 the next, ...; others are never embedded",
    )


def _face_index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a face number (0 is the largest face), got {text!r}")
    return value


def model_calibration(args: argparse.Namespace) -> float:
    """``calibrate --face-model``: the face model's own threshold for this store."""
    faces = require_faces()
    with session(args, edge=True) as parties:
        assert parties.edge is not None
        return parties.service.calibrate(calibration=faces.calibration(parties.edge))


__all__ = [
    "add_enrol_options",
    "add_probe_options",
    "cmd_enrol_photos",
    "model_calibration",
    "photo_files",
    "probe_input",
    "probe_message",
]
