"""Atomic, crash-safe file writes.

Every long stage of progemu writes its artefacts through these helpers so that a
run killed at any instant (SIGKILL included) leaves either the old file or the
complete new one, never a truncated file: data is written to a temporary file
in the same directory, flushed and fsync'ed, then renamed over the target
(``os.replace`` is atomic on POSIX within one filesystem).

``tempfile.mkstemp`` creates its file owner-only (0600) whatever the umask; the helpers give
the file the mode ``open()`` would have (``0666 & ~umask``, e.g. 0644) before it is renamed into
place, so outputs can be read by a colleague or a web server as the process umask allows.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_png",
    "append_jsonl",
    "read_jsonl",
    "file_mode",
    "make_temp_file",
    "match_umask",
]


def _current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once (not atomic across threads)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits a new regular file gets from ``open()`` under the current umask."""
    return 0o666 & ~_current_umask()


def match_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or every file under a folder) the umask's file mode.

    For files written by libraries that create them owner-only (``safetensors.save_file``
    writes 0600): call it on the file or folder before it is renamed into place.
    """
    path = Path(path)
    mode = file_mode()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    for file in files:
        if file.stat().st_mode & 0o777 != mode:
            os.chmod(file, mode)


def make_temp_file(path: Path) -> tuple[int, str]:
    """``mkstemp`` beside ``path`` (same filesystem, so ``os.replace`` is atomic), with :func:`file_mode`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (tmp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    text = json.dumps(obj, indent=indent, sort_keys=False, ensure_ascii=False, default=_json_default)
    return atomic_write_text(path, text + "\n")


def atomic_save_png(path: str | os.PathLike, image) -> Path:
    """Save a greyscale image atomically as an 8-bit PNG.

    ``image``: a PIL image, a uint8 array [H, W], or a float array [H, W] in [0, 1]
    (clipped, rounded to 0..255).
    """
    import numpy as np
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = np.clip(np.rint(np.asarray(array, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync it, so a killed run keeps every finished record.

    A crash can at worst leave a partial last line; :func:`read_jsonl` skips it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike, skip_partial: bool = True) -> list[dict]:
    """Read a JSON-lines file; a truncated final line (from a killed writer) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if skip_partial and number == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {number + 1} is not valid JSON; delete or repair the file") from None
    return records


def _json_default(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def iter_chunks(items: Iterable, size: int):
    """Yield lists of at most ``size`` items."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
