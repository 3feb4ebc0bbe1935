"""What made an output: record it beside the output, compare it before reusing anything.

A stage writes a small JSON *identity* (resolved settings + the identities of its
inputs: dataset manifest hash, model / tokenizer identity, seed...) next to what it
produces. A re-run computes the identity it would write and calls :func:`check_same`:

- no identity on disk -> fresh output, go on;
- same identity -> resume or skip;
- different -> :class:`StaleOutputError` with one line naming what differs
  (``--cfg 1.0 (now 3.0)``) and how to start afresh (``--overwrite`` or a new ``--out``).

Helpers: :func:`fingerprint` (hash of a JSON-able value), :func:`file_digest`,
:func:`checkpoint_identity` (content hash of a model directory's weights and configs) and
:func:`dataset_identity` (hash of a curated dataset's ``manifest.jsonl``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from .checks import UsageError

__all__ = ["StaleOutputError", "fingerprint", "file_digest", "checkpoint_identity", "dataset_identity",
           "differences", "check_same", "read_identity", "write_identity", "flatten"]

#: files above this size are hashed by size + head + tail + a few samples (multi-GB weights)
_FULL_HASH_LIMIT = 256 * 1024 * 1024
_SAMPLE = 1024 * 1024


class StaleOutputError(UsageError):
    """An output folder was made with other settings or inputs than this run's."""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(value: Any, length: int = 16) -> str:
    """Short sha256 of a JSON-able value (key order does not matter)."""
    return hashlib.sha256(_canonical(value).encode("utf-8")).hexdigest()[:length]


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's content (for files over 256 MB: of its size, head, tail and 16 samples)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(str(size).encode())
            for k in range(18):
                handle.seek(min(size - _SAMPLE, (size - _SAMPLE) * k // 17))
                digest.update(handle.read(_SAMPLE))
    return digest.hexdigest()


_SKIP_DIRS = {"checkpoints", "tensorboard", "runs", "examples", "__pycache__"}
_SKIP_FILES = {"log.jsonl", "train_config.json", "train_summary.json", "eval.json"}


def _identity_files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") or part in _SKIP_DIRS for part in relative.parts):
            continue
        if path.is_file() and path.name not in _SKIP_FILES and path.suffix not in (".pt", ".lock"):
            yield path


def checkpoint_identity(directory: str | os.PathLike) -> str:
    """Content hash of a model checkpoint (weights, configs, tokenizers; not logs or step checkpoints)."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: checkpoint directory not found")
    digest = hashlib.sha256()
    for path in _identity_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + file_digest(path).encode() + b"\n")
    return digest.hexdigest()[:16]


def dataset_identity(data_dir: str | os.PathLike) -> str | None:
    """Hash of a curated dataset's ``manifest.jsonl`` (``None`` when it has none)."""
    manifest = Path(data_dir) / "manifest.jsonl"
    return file_digest(manifest)[:16] if manifest.is_file() else None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: {}}
    return {prefix: value}


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) > 40:
        return repr(value[:18] + "..." + value[-18:])
    return json.dumps(value, default=str) if not isinstance(value, str) else repr(value)


def differences(saved: Mapping, current: Mapping, *, ignore: Iterable[str] = (),
                names: Mapping[str, str] | None = None) -> list[str]:
    """``["--cfg 1.0 (now 3.0)", ...]`` for every (dotted) key whose value differs.

    ``names`` maps a key to how the user sets it (a flag); keys starting with ``_`` and keys in
    ``ignore`` (or under an ignored prefix) are not compared.
    """
    ignore = set(ignore)
    names = dict(names or {})
    old, new = flatten(dict(saved)), flatten(dict(current))
    found = []
    for key in sorted(set(old) | set(new)):
        if key.startswith("_") or key in ignore or any(key.startswith(prefix + ".") for prefix in ignore):
            continue
        if _canonical(old.get(key)) == _canonical(new.get(key)):
            continue
        label = names.get(key) or names.get(key.split(".")[0]) or key
        if key not in old:
            found.append(f"{label} (not recorded before; now {_show(new[key])})")
        elif key not in new:
            found.append(f"{label} {_show(old[key])} (not set now)")
        else:
            found.append(f"{label} {_show(old[key])} (now {_show(new[key])})")
    return found


def read_identity(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StaleOutputError(f"{path}: unreadable (not JSON); delete it or start afresh with a new --out") from None
    if not isinstance(data, dict):
        raise StaleOutputError(f"{path}: expected a JSON object; delete it or start afresh with a new --out")
    return data


def write_identity(path: str | os.PathLike, identity: Mapping) -> Path:
    from .atomic import atomic_write_json

    return atomic_write_json(path, dict(identity))


def check_same(path: str | os.PathLike, current: Mapping, *, what: str, fresh: str = "pass --overwrite or choose a new --out",
               ignore: Iterable[str] = (), names: Mapping[str, str] | None = None) -> bool:
    """Compare ``current`` with the identity recorded at ``path``.

    Returns ``False`` when nothing is recorded (a fresh output) and ``True`` when the same
    identity is; raises :class:`StaleOutputError` naming up to four differences otherwise.
    ``what`` names the output (``"OUT/generations/progemu"``), ``fresh`` says how to start afresh.
    """
    saved = read_identity(path)
    if saved is None:
        return False
    found = differences(saved, current, ignore=ignore, names=names)
    if not found:
        return True
    more = f" and {len(found) - 4} more" if len(found) > 4 else ""
    raise StaleOutputError(f"{what} was made with other settings: {', '.join(found[:4])}{more} "
                           f"(recorded in {path}); {fresh}")
