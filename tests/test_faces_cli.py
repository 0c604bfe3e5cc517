"""Photos on the command line: ``enrol --image/--images``, ``verify``/``identify --image [--face N]``,
``calibrate --face-model``, and one-line errors for photos the face model refuses."""

from __future__ import annotations

import json
from pathlib import Path
import pytest
from faces_support import ENROL, PROBE, TWO_PEOPLE, needs_photos, photo
from fpmatch import cli

pytestmark = needs_photos


@pytest.fixture(autouse=True)
def _no_key_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FPMATCH_STORE", "FPMATCH_KEY", "FPMATCH_SERVICE_KEY", "FPMATCH_KEYHOLDER_KEY"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Store options of a new hybrid store for 128-D embeddings, everyone in ENROL consenting."""
    keys = tmp_path / "keys"
    keys.mkdir()
    for kind in ("edge", "service", "keyholder"):
        assert run(capsys, "keys", "new", "--kind", kind, str(keys / f"{kind}.key"))[0] == 0
    argv = ["--store", str(tmp_path / "store"), "--key", str(keys / "edge.key"),
            "--service-key", str(keys / "service.key"), "--keyholder-key", str(keys / "keyholder.key")]  # fmt: skip
    for person in ENROL:
        code, _, err = run(capsys, "consent", "grant", person, "--purpose", "entry", "--notice-version", "1",
                           "--evidence", "form", "--method", "signed-form", "--retention-days", "30",
                           "--dim", "128", *argv)  # fmt: skip
        assert code == 0, err
    return argv


def one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("fpmatch: error: ") and fragment in err, err


def test_photos_end_to_end(capsys: pytest.CaptureFixture[str], store: list[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "enrol", "obama", "--image", str(photo(ENROL["obama"])), *store)
    assert code == 0 and "obama: enrolled" in out, err
    folder = tmp_path / "people"
    folder.mkdir()
    for person in ("biden", "alex"):  # links, not copies, of the shared photos
        (folder / f"{person}.jpg").symlink_to(photo(ENROL[person]))
    (folder / "notes.txt").write_text("not a photo")
    code, out, err = run(capsys, "enrol", "--images", str(folder), *store)
    assert code == 0 and "biden: enrolled" in out and "alex: enrolled" in out, err
    code, out, err = run(capsys, "calibrate", "--face-model", *store)
    assert code == 0 and "cosine >= 0.91" in out, err
    for person in ("obama", "biden", "alex"):
        code, out, err = run(capsys, "verify", person, "--image", str(photo(PROBE[person])), "--purpose", "entry", *store)
        assert (code, out.strip()) == (0, "match"), err
    code, out, _ = run(capsys, "verify", "obama", "--image", str(photo(PROBE["biden"])), "--purpose", "entry", *store)
    assert out.strip() == "no_match"
    code, out, _ = run(capsys, "identify", "--image", str(photo(TWO_PEOPLE)), "--purpose", "entry", *store)
    assert [json.loads(line)["subject"] for line in out.splitlines()] == ["biden"]
    code, out, _ = run(capsys, "identify", "--image", str(photo(TWO_PEOPLE)), "--face", "1", "--purpose", "entry", *store)
    assert [json.loads(line)["subject"] for line in out.splitlines()] == ["obama"]


def test_photo_refusals_are_one_line_errors(capsys: pytest.CaptureFixture[str], store: list[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "enrol", "rose", "--image", str(photo(TWO_PEOPLE)), *store)
    one_line_error(code, err, "2 faces")
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "rose.jpg").symlink_to(photo(ENROL["rose"]))
    (folder / "alex.jpg").symlink_to(photo(TWO_PEOPLE))
    code, _, err = run(capsys, "enrol", "--images", str(folder), *store)
    one_line_error(code, err, "2 faces")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nothing else")
    code, _, err = run(capsys, "enrol", "rose", "--image", str(tmp_path / "broken.jpg"), *store)
    one_line_error(code, err, "broken.jpg")
    code, _, err = run(capsys, "verify", "rose", "--image", str(tmp_path / "absent.jpg"), "--purpose", "entry", *store)
    one_line_error(code, err, "not found")
    code, out, err = run(capsys, "verify", "rose", "--image", str(photo(PROBE["rose"])), "--purpose", "entry", *store)
    assert (code, out.strip()) == (0, "use_alternative"), err  # nobody was enrolled
    code, _, err = run(capsys, "verify", "rose", "--purpose", "entry", *store)
    assert code == 2 and "--probe" in err


def test_help_names_the_photo_options(capsys: pytest.CaptureFixture[str]) -> None:
    for command, options in (("enrol", ("--image", "--images")), ("verify", ("--image", "--face")),
                             ("identify", ("--image", "--face")), ("calibrate", ("--face-model",))):  # fmt: skip
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and all(option in out for option in options)


def test_demo_on_the_shared_photos(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo", "--photos", str(photo(".")))
    assert code == 0, err
    assert "same person: matched" in out and "6 of 6" in out
    assert "another person: matched" in out and "0 of 18" in out
    assert "enrol two_people.jpg" in out and "refused" in out
    assert "then verify" in out and "use_alternative" in out and "intact" in out
