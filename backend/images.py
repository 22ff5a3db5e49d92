"""Reading input images and writing results, with errors that name the file and no partial output."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import InvalidRequest

# A declared size beyond this is refused before decoding (decompression bombs, 20000x20000 uploads).
MAX_INPUT_PIXELS = 4096 * 4096


def open_image(source: str | os.PathLike | bytes, role: str = "image", mode: str = "RGB"):
    """Open an image file (or PNG/JPEG bytes) fully into memory, converted to `mode`.

    `role` names the input in the error ("init image", "mask", ...), since that is what the user knows.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    label = f"the {role}" + (f" '{source}'" if not isinstance(source, bytes) else "")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except FileNotFoundError:
        raise InvalidRequest(f"{label} does not exist") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise InvalidRequest(f"{label} cannot be read: {exc.strerror}") from None
    with handle:
        try:
            with Image.open(handle) as image:
                width, height = image.size
                if width * height > MAX_INPUT_PIXELS:
                    raise InvalidRequest(
                        f"{label} is {width}x{height}, larger than the {MAX_INPUT_PIXELS} pixels accepted"
                    )
                image.load()
                return image.convert(mode)
        except UnidentifiedImageError:
            raise InvalidRequest(f"{label} is not an image file PIL can read (PNG, JPEG, WebP, ...)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, InvalidRequest):
                raise
            raise InvalidRequest(f"{label} is damaged or truncated: {exc}") from None
        except Image.DecompressionBombError as exc:  # PIL's own guard fires on open, before our size check
            import re

            declared = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"declares {declared.group(1)} pixels" if declared else "is too large to decode safely"
            raise InvalidRequest(f"{label} {size}, more than the {MAX_INPUT_PIXELS} pixels accepted") from None


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes files private (0600); outputs get the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(image, params: dict[str, Any] | None = None) -> bytes:
    """PNG encoding of `image` with `params` in its text chunks (see backend.metadata)."""
    import io

    from .metadata import png_info

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(params) if params else None)
    return buffer.getvalue()


def save_png(image, path: str | os.PathLike, params: dict[str, Any] | None = None) -> None:
    write_atomic(path, png_bytes(image, params))
