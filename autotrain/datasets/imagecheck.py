"""Read, hash and fully decode dataset files, spread over the CPU cores.

Kept apart from `validate` so that worker processes import only the standard library and Pillow.
Each file is read once: the same bytes are hashed (for duplicates and the staging manifest) and
decoded from memory. A header check is not enough (truncated files pass it), so every image is
decoded in full, and a decompression-bomb warning counts as an error before any pixel is decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

from PIL import Image, ImageFile, ImageOps

from autotrain.errors import ValidationError

__all__ = [
    "FileCheck",
    "check_files",
    "check_file",
    "read_nofollow",
    "upright_bytes",
    "INLINE_LIMIT",
    "cpu_count",
]

INLINE_LIMIT = 32  # below this many files a pool costs more than it saves
_CHUNK_MAX = 64


class FileCheck(NamedTuple):
    """The verdict on one file; a plain tuple so it crosses process boundaries cheaply."""

    relpath: str
    size: int
    sha256: str
    width: int = 0
    height: int = 0
    error: str | None = None  # images: why it cannot be used
    empty: bool = False  # captions: only whitespace
    bad_utf8: bool = False  # captions: not valid UTF-8
    orientation: int = 1  # images: the EXIF orientation tag (1 = upright)
    mode: str = ""  # images: Pillow's mode, e.g. "I;16" for 16-bit greyscale
    multi_line: bool = False  # captions: text after the first line, which sd-scripts drops


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def read_nofollow(path: str) -> bytes:
    """The whole file, refusing a symlink swapped in since the folder was listed."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:  # plain os.read: a buffered file object costs more than the read for small files
        parts = []
        while part := os.read(fd, 1 << 24):
            parts.append(part)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def check_file(root: str, relpath: str, is_caption: bool) -> FileCheck:
    """Read one file once; hash it; decode an image fully or check a caption's text."""
    try:
        data = read_nofollow(os.path.join(root, relpath))
    except OSError as exc:
        return FileCheck(relpath, 0, "", error=f"cannot read: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    if is_caption:
        text = data.decode("utf-8-sig", errors="replace")
        try:
            data.decode("utf-8-sig")
            bad = False
        except UnicodeDecodeError:
            bad = True
        return FileCheck(
            relpath,
            len(data),
            digest,
            empty=not text.strip(),
            bad_utf8=bad,
            multi_line=_multi_line(text),
        )
    try:
        width, height, orientation, mode = _decode(data)
    except Exception as exc:  # Pillow raises many types for corrupt data; each is a bad file
        return FileCheck(relpath, len(data), digest, error=_describe(exc, data))
    return FileCheck(relpath, len(data), digest, width, height, orientation=orientation, mode=mode)


def upright_bytes(data: bytes) -> bytes:
    """The image turned as its EXIF orientation says, the tag dropped, in the same format.

    sd-scripts opens images with PIL and converts them to RGB, never applying the EXIF
    orientation (library/train_util.py:2948, load_image), so a phone photo would train sideways.
    PNG and WebP are written losslessly; JPEG at quality 95 without chroma subsampling.
    """
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format or "PNG"
        icc = image.info.get("icc_profile")
        turned = ImageOps.exif_transpose(image)
    options: dict[str, object] = {"icc_profile": icc} if icc else {}
    if fmt == "JPEG":
        options |= {"quality": 95, "subsampling": 0}
    elif fmt == "WEBP":
        options |= {"lossless": True}
    out = io.BytesIO()
    turned.save(out, format=fmt, **options)
    return out.getvalue()


def _multi_line(text: str) -> bool:
    """Whether the trainer's first line (sd-scripts keeps `lines[0].strip()`, train_util.py:1968)
    differs from the whole caption: more text follows it, or it is blank before text."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return bool(text.strip()) and lines[0].strip() != text.strip()


def check_files(
    root: str,
    items: Sequence[tuple[str, bool]],
    *,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> list[FileCheck]:
    """Check `(relpath, is_caption)` items, in worker processes when there are enough of them."""
    workers = workers or cpu_count()
    if workers <= 1 or len(items) < INLINE_LIMIT:
        return _run_inline(root, items, progress)
    size = max(8, min(_CHUNK_MAX, len(items) // (workers * 4) or 1))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    try:
        pool = ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_init_worker)
        with pool:
            futures = [pool.submit(_check_chunk, root, chunk) for chunk in chunks]
            return _collect(futures, chunks, len(items), progress)
    except _NO_PROCESSES:
        # e.g. inside a daemonic worker process: threads still overlap, Pillow frees the GIL
        with ThreadPoolExecutor(workers) as threads:
            futures = [threads.submit(_check_chunk, root, chunk) for chunk in chunks]
            return _collect(futures, chunks, len(items), progress)


# What starting worker processes raises where it is impossible (daemonic parent, no fork).
_NO_PROCESSES = (AssertionError, OSError, NotImplementedError)


def _run_inline(
    root: str, items: Sequence[tuple[str, bool]], progress: Callable[[int, int], None] | None
) -> list[FileCheck]:
    results = []
    for done, (relpath, is_caption) in enumerate(items, 1):
        results.append(check_file(root, relpath, is_caption))
        if progress and (done % 16 == 0 or done == len(items)):
            progress(done, len(items))
    return results


def _collect(
    futures: list[Future[list[FileCheck]]],
    chunks: list[Sequence[tuple[str, bool]]],
    total: int,
    progress: Callable[[int, int], None] | None,
) -> list[FileCheck]:
    results: list[FileCheck] = []
    try:
        for future in as_completed(futures):
            results.extend(future.result())
            if progress:
                progress(len(results), total)
    except BrokenProcessPool as exc:
        unfinished = [c for f, c in zip(futures, chunks, strict=True) if not _finished_ok(f)]
        pending = [relpath for chunk in unfinished for relpath, _ in chunk]
        raise ValidationError(
            "A decoding worker died (out of memory?) while checking one of: "
            + ", ".join(pending[:10])
            + (" ..." if len(pending) > 10 else "")
            + ". Remove or shrink the offending image and retry."
        ) from exc
    finally:
        for future in futures:
            future.cancel()
    results.sort(key=lambda check: check.relpath)
    return results


def _finished_ok(future: Future[list[FileCheck]]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _check_chunk(root: str, chunk: Sequence[tuple[str, bool]]) -> list[FileCheck]:
    return [check_file(root, relpath, is_caption) for relpath, is_caption in chunk]


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork is cheapest but unsafe once the parent has threads; then a preloaded forkserver."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _init_worker() -> None:
    # Our own size check reports bombs; the warning would only repeat it on stderr.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, whatever the parent set


def _decode(data: bytes) -> tuple[int, int, int, str]:
    """Full decode from memory: the size as displayed (after EXIF orientation), the EXIF
    orientation tag and the mode."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = image.width * image.height
        if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} = {pixels} pixels is over the "
                f"{Image.MAX_IMAGE_PIXELS} pixel safety limit"
            )
        image.load()
        mode, orientation = image.mode, 1
        with contextlib.suppress(Exception):  # broken EXIF does not stop a trainer reading pixels
            orientation = int(image.getexif().get(_ORIENTATION, 1))
            ImageOps.exif_transpose(image, in_place=True)
        return image.width, image.height, orientation if 2 <= orientation <= 8 else 1, mode


_ORIENTATION = 0x0112


def _describe(exc: Exception, data: bytes) -> str:
    """A reason a user can act on, e.g. 'truncated image' rather than a bare OSError."""
    if not data:
        return "empty file (0 bytes)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"decompression bomb: {exc}"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image Pillow can read (wrong extension or corrupt header)"
    message = str(exc) or type(exc).__name__
    if "truncated" in message.lower():
        return f"truncated image: {message}"
    return f"cannot decode: {type(exc).__name__}: {message}"
