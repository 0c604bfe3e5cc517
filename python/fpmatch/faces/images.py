"""Reading photos: a path, encoded bytes or an image array becomes an RGB uint8 array, or an ImageError.

Decoding is Pillow's; every way a file can fail (missing, not an image,
truncated, corrupt, a decompression bomb) becomes one typed error naming the
photo, so a kiosk can tell the person to try again rather than crash.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any, Union

import numpy as np

from .errors import FaceModelUnavailableError, ImageError

#: Largest photo decoded, in pixels (a 48-megapixel camera frame); larger is refused before decoding.
MAX_PIXELS = 48_000_000
#: Largest photo file or byte string read.
MAX_FILE_BYTES = 64 << 20
#: Longest side the face detector sees; larger photos are scaled down (faces stay far above its 40-pixel minimum).
MAX_SIDE = 1280

Photo = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray, Any]


def is_photo(value: object) -> bool:
    """Whether ``value`` is a photo rather than an embedding: a path, encoded bytes, a PIL image,
    or a uint8 array of shape (H, W) or (H, W, 3|4). Float arrays are embeddings."""
    if isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype == np.uint8 and (value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (3, 4)))
    return type(value).__module__.startswith("PIL.")


def _pil() -> Any:
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise FaceModelUnavailableError("reading photos needs Pillow: pip install 'fpmatch[faces]'") from None
    return Image, ImageOps


def describe(photo: object) -> str:
    """How an error message names the photo."""
    if isinstance(photo, (str, os.PathLike)):
        return os.fspath(photo)
    if isinstance(photo, np.ndarray):
        return f"image array {photo.shape}"
    if isinstance(photo, (bytes, bytearray, memoryview)):
        return f"image bytes ({len(photo)} bytes)"
    return type(photo).__name__


def read_image(photo: Photo) -> np.ndarray:
    """The photo as a C-contiguous (H, W, 3) uint8 RGB array, scaled down to :data:`MAX_SIDE`.

    EXIF orientation is applied (phones store portraits sideways).
    """
    Image, ImageOps = _pil()
    name = describe(photo)
    if isinstance(photo, np.ndarray):
        if not is_photo(photo):
            raise ImageError(f"an image array must be uint8 of shape (H, W) or (H, W, 3|4), got {photo.dtype} {photo.shape}")
        if photo.shape[0] < 1 or photo.shape[1] < 1 or photo.shape[0] * photo.shape[1] > MAX_PIXELS:
            raise ImageError(f"{name}: size out of range (at most {MAX_PIXELS:,} pixels)")
        image = Image.fromarray(np.ascontiguousarray(photo))
    elif type(photo).__module__.startswith("PIL."):
        image = photo
    else:
        image = _decode(Image, photo, name)
    try:
        image = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: corrupt image data ({_short(exc)})") from None
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _decode(Image: Any, photo: object, name: str) -> Any:
    if isinstance(photo, (str, os.PathLike)):
        try:
            with open(photo, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise ImageError(f"photo not found: {name}") from None
        except IsADirectoryError:
            raise ImageError(f"{name} is a directory, not a photo") from None
        except OSError as exc:
            raise ImageError(f"cannot read photo {name}: {exc.strerror or _short(exc)}") from None
    else:
        data = bytes(photo)  # type: ignore[arg-type]
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{name} is larger than {MAX_FILE_BYTES >> 20} MiB")
    if not data:
        raise ImageError(f"{name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"{name}: {image.width}x{image.height} pixels is more than {MAX_PIXELS:,}")
            image.load()  # decode now: truncated and corrupt data fail here, not later
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name} is not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: corrupt or truncated image data ({_short(exc)})") from None
    return image


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


__all__ = ["MAX_FILE_BYTES", "MAX_PIXELS", "MAX_SIDE", "Photo", "describe", "is_photo", "read_image"]
