"""The code cache: every image of a dataset encoded once, keyed by the tokenizer's identity.

Layout under the dataset root (``identity`` = :attr:`ImageTokenizer.identity`)::

    DATA/codes/<identity>/
        tokenizer.json          # identity, image size, grid, codebook size, architecture
        index.json              # {"plan": P, "paths": [image path relative to DATA, ...], "grid": [h, w]}
        codes-<P>.npy           # int32 [N, h, w], row i = paths[i]  (numpy .npy, memory-mapped)
        done-<P>.npy            # uint8 [N], 1 once row i is written and flushed
        failed.json             # {relative path: reason} for images that could not be read (retried on re-run)
        checksums.json          # {"plan", "identity", "files": {"codes-<P>.npy": {"bytes", "sha256"}}}

Why this shape:
- a different tokenizer writes to a different ``<identity>`` folder, so stale codes are
  never mixed with new ones, and several tokenizers can be cached side by side;
- rows are written and flushed *before* their ``done`` flag, so a run killed at any instant
  leaves only rows that are either complete and flagged or recomputed on resume;
- ``<P>`` is a hash of the image list: when the dataset gains or loses images a new pair of
  arrays is built (finished rows are copied over), and ``index.json`` is switched to it with
  one atomic rename, so a reader always sees a consistent index + arrays;
- every array's length is checked against its ``.npy`` header before it is opened (a
  truncated file is never memory-mapped, which would silently grow it back with zeros),
  and a finished run records the sha256 of each codes shard in ``checksums.json`` (removed
  while a run writes, rewritten when it ends): a reader verifies it, a re-run of
  ``progemu tokenize`` re-encodes a cache that fails the check.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from progemu.utils.atomic import atomic_write_json

__all__ = ["CodeCache", "ensure_codes", "cache_dir", "verify_cache", "CorruptCacheError", "CODES_DIRNAME"]

CODES_DIRNAME = "codes"
INDEX_NAME = "index.json"
TOKENIZER_NAME = "tokenizer.json"
FAILED_NAME = "failed.json"
CHECKSUM_NAME = "checksums.json"


class CorruptCacheError(ValueError):
    """A code cache whose arrays do not match their header or recorded checksum."""


def _npy_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete ``.npy`` file (``None`` when its length matches its header)."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            offset = handle.tell()
    except FileNotFoundError:
        return "missing"
    except (ValueError, OSError, SyntaxError) as error:
        return f"unreadable header ({error})"
    expected = offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    actual = path.stat().st_size
    if actual != expected:
        return f"{actual} bytes, its header says {expected} (truncated or overwritten)"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_cache(root: Path, *, checksum: bool = True) -> str | None:
    """Problem with the cache at ``root`` (``None`` when sound): array lengths vs headers, the
    tokenizer identity recorded in the index, and (when recorded) each codes shard's sha256."""
    index_path = root / INDEX_NAME
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        plan = index["plan"]
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"{index_path}: unreadable index"
    if index.get("identity", root.name) != root.name:
        return f"{index_path}: made for tokenizer {index.get('identity')}, not {root.name}"
    for name in (f"codes-{plan}.npy", f"done-{plan}.npy"):
        problem = _npy_problem(root / name)
        if problem:
            return f"{root / name}: {problem}"
    sums_path = root / CHECKSUM_NAME
    if checksum and sums_path.exists():
        try:
            sums = json.loads(sums_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return f"{sums_path}: unreadable"
        if sums.get("plan") == plan:
            for name, expected in sums.get("files", {}).items():
                path = root / name
                if path.stat().st_size != expected.get("bytes") or _sha256(path) != expected.get("sha256"):
                    return f"{path}: content differs from the checksum recorded when it was written"
    return None


def _checksum_plan(root: Path) -> str | None:
    try:
        return json.loads((root / CHECKSUM_NAME).read_text(encoding="utf-8")).get("plan")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None


def _write_checksums(root: Path, plan: str) -> None:
    name = f"codes-{plan}.npy"
    path = root / name
    atomic_write_json(root / CHECKSUM_NAME, {"plan": plan, "identity": root.name,
                                             "files": {name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}}})


def cache_dir(data_dir: str | os.PathLike, identity: str) -> Path:
    return Path(data_dir) / CODES_DIRNAME / identity


def _relative(data_dir: Path, image_path: str | os.PathLike) -> str:
    """Cache key: the image path relative to the dataset root, POSIX style."""
    path = Path(image_path)
    if path.is_absolute():
        try:
            path = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(data_dir)))
        except ValueError:
            raise KeyError(f"{image_path} is not inside the dataset {data_dir}; codes are cached per dataset") from None
    return path.as_posix()


def _plan_id(paths: list[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()[:12]


class CodeCache:
    """Read access to ``DATA/codes/<identity>/``.

    ``get(image_path)`` returns ``int32 [h, w]`` codes for an image given by an absolute
    path inside ``data_dir`` or a path relative to it; ``KeyError`` (naming the image and the
    command to run) when it has not been encoded.
    """

    def __init__(self, data_dir: str | os.PathLike, identity: str):
        self.data_dir = Path(data_dir)
        self.identity = str(identity)
        self.root = cache_dir(self.data_dir, self.identity)
        index_path = self.root / INDEX_NAME
        if not index_path.exists():
            raise FileNotFoundError(f"{self.root}: no code cache for tokenizer {self.identity}; run "
                                    f"`progemu tokenize --data {self.data_dir} --tokenizer TOKENIZER_DIR`")
        problem = verify_cache(self.root)
        if problem:
            raise CorruptCacheError(f"{problem}; run `progemu tokenize --data {self.data_dir} --tokenizer "
                                    "TOKENIZER_DIR` again (it re-encodes a damaged cache)")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        self.plan = index["plan"]
        self.paths: list[str] = list(index["paths"])
        self.grid = tuple(int(v) for v in index["grid"])
        self.rows = {path: row for row, path in enumerate(self.paths)}
        self._codes = np.load(self.root / f"codes-{self.plan}.npy", mmap_mode="r")
        self._done = np.load(self.root / f"done-{self.plan}.npy", mmap_mode="r")
        tokenizer_path = self.root / TOKENIZER_NAME
        self.tokenizer_info = json.loads(tokenizer_path.read_text(encoding="utf-8")) if tokenizer_path.exists() else {}
        if self.tokenizer_info.get("identity", self.identity) != self.identity:
            raise CorruptCacheError(f"{tokenizer_path}: codes of tokenizer {self.tokenizer_info.get('identity')} in "
                                    f"the folder of {self.identity}; delete {self.root} and run `progemu tokenize` again")
        failed_path = self.root / FAILED_NAME
        self.failed: dict[str, str] = json.loads(failed_path.read_text(encoding="utf-8")) if failed_path.exists() else {}

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_done(self) -> int:
        return int(np.count_nonzero(self._done))

    @property
    def complete(self) -> bool:
        """Every readable image has codes (unreadable ones are listed in :attr:`failed`)."""
        return self.num_done + len(self.failed) >= len(self.paths)

    def has(self, image_path: str | os.PathLike) -> bool:
        try:
            row = self.rows.get(_relative(self.data_dir, image_path))
        except KeyError:
            return False
        return row is not None and bool(self._done[row])

    def get(self, image_path: str | os.PathLike) -> np.ndarray:
        key = _relative(self.data_dir, image_path)
        row = self.rows.get(key)
        if key in self.failed:
            raise KeyError(f"{key}: image could not be read when caching codes ({self.failed[key]}); fix or remove it "
                           f"and re-run `progemu tokenize --data {self.data_dir} --tokenizer TOKENIZER_DIR`")
        if row is None or not self._done[row]:
            raise KeyError(f"{key}: no cached codes for tokenizer {self.identity}; run "
                           f"`progemu tokenize --data {self.data_dir} --tokenizer TOKENIZER_DIR` (it resumes)")
        return np.array(self._codes[row], dtype=np.int32)

    def get_many(self, image_paths) -> np.ndarray:
        """``int32 [N, h, w]`` for several images (same errors as :meth:`get`)."""
        return np.stack([self.get(path) for path in image_paths]) if image_paths else np.zeros((0, *self.grid), np.int32)


def ensure_codes(data_dir: str | os.PathLike, tokenizer, images: list | None = None, *, batch_size: int = 16,
                 progress: bool = True) -> CodeCache:
    """Encode every image of ``data_dir`` not yet cached for ``tokenizer``; return the cache.

    ``images``: the absolute (inside ``data_dir``) or relative paths to cache; default every image
    of the dataset (:func:`progemu.tokenizer.images.dataset_images`, all splits). Batched,
    resumable (finished rows are kept) and crash-safe (see the module docstring). Images are
    encoded at the tokenizer's native size.
    """
    from tqdm.auto import tqdm

    from progemu.tokenizer.images import dataset_images, load_image
    from progemu.tokenizer.vqvae import describe

    import torch

    data_dir = Path(data_dir)
    if images is None:
        images = dataset_images(data_dir)
    wanted = sorted({_relative(data_dir, path) for path in images})
    identity = tokenizer.identity
    root = cache_dir(data_dir, identity)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / TOKENIZER_NAME).exists():
        atomic_write_json(root / TOKENIZER_NAME, describe(tokenizer))
    grid = tuple(int(v) for v in tokenizer.grid)
    problem = verify_cache(root)
    if problem:  # never memory-map a damaged array (r+ would grow a truncated one back with zeros)
        import logging

        logging.getLogger(__name__).warning("%s; discarding this code cache and encoding again", problem)
        for stale in [INDEX_NAME, CHECKSUM_NAME, *(p.name for p in root.glob("*.npy"))]:
            (root / stale).unlink(missing_ok=True)
    _switch_plan(root, wanted, grid)

    index = json.loads((root / INDEX_NAME).read_text(encoding="utf-8"))
    plan = index["plan"]
    done = np.load(root / f"done-{plan}.npy", mmap_mode="r")
    todo = [row for row in range(len(wanted)) if not done[row]]
    del done
    if todo or _checksum_plan(root) != plan:
        (root / CHECKSUM_NAME).unlink(missing_ok=True)  # rows are about to change: the old checksum no longer vouches
    codes = np.load(root / f"codes-{plan}.npy", mmap_mode="r+")
    done = np.load(root / f"done-{plan}.npy", mmap_mode="r+")
    failed_path = root / FAILED_NAME
    failures: dict[str, str] = json.loads(failed_path.read_text(encoding="utf-8")) if failed_path.exists() else {}
    with tqdm(total=len(todo), desc=f"tokenize ({identity})", disable=not progress, unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            rows, arrays = [], []
            for row in todo[start:start + batch_size]:
                try:
                    arrays.append(load_image(data_dir / wanted[row], tokenizer.image_size))
                    rows.append(row)
                    failures.pop(wanted[row], None)
                except (ValueError, OSError) as error:
                    failures[wanted[row]] = str(error)  # retried on the next run; never silently dropped
            bar.update(len(todo[start:start + batch_size]) - len(rows))
            if not rows:
                continue
            pixels = np.stack(arrays)
            batch_codes = tokenizer.encode(torch.from_numpy(pixels)[:, None]).numpy().astype(np.int32)
            codes[rows] = batch_codes
            codes.flush()  # rows reach the disk before their flags
            done[rows] = 1
            done.flush()
            bar.update(len(rows))
    del codes, done
    if not (root / CHECKSUM_NAME).exists():
        _write_checksums(root, plan)  # last: it vouches for the rows written above
    failures = {k: v for k, v in failures.items() if k in set(wanted)}
    atomic_write_json(failed_path, failures)
    if failures:
        import logging

        logging.getLogger(__name__).warning("%d image(s) could not be read and have no codes (listed in %s)",
                                            len(failures), failed_path)
    return CodeCache(data_dir, identity)


def _switch_plan(root: Path, wanted: list[str], grid: tuple[int, int]) -> None:
    """Make ``index.json`` describe exactly ``wanted``, keeping finished rows of the previous plan."""
    index_path = root / INDEX_NAME
    plan = _plan_id(wanted)
    old = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else None
    if old and old.get("plan") == plan and (root / f"codes-{plan}.npy").exists() and (root / f"done-{plan}.npy").exists():
        return
    codes = np.lib.format.open_memmap(root / f"codes-{plan}.npy.tmp", mode="w+", dtype=np.int32, shape=(len(wanted), *grid))
    done = np.lib.format.open_memmap(root / f"done-{plan}.npy.tmp", mode="w+", dtype=np.uint8, shape=(len(wanted),))
    done[:] = 0
    if old:
        try:
            old_codes = np.load(root / f"codes-{old['plan']}.npy", mmap_mode="r")
            old_done = np.load(root / f"done-{old['plan']}.npy", mmap_mode="r")
            new_rows = {path: row for row, path in enumerate(wanted)}
            for old_row, path in enumerate(old["paths"]):
                if path in new_rows and old_done[old_row]:
                    codes[new_rows[path]] = old_codes[old_row]
                    done[new_rows[path]] = 1
        except (FileNotFoundError, ValueError, KeyError):
            pass  # unreadable previous arrays: everything is recomputed
    codes.flush()
    done.flush()
    del codes, done
    for name in ("codes", "done"):
        os.replace(root / f"{name}-{plan}.npy.tmp", root / f"{name}-{plan}.npy")
    atomic_write_json(index_path, {"schema": 1, "identity": root.name, "plan": plan, "grid": list(grid), "paths": wanted})
    if old and old.get("plan") != plan:
        for name in ("codes", "done"):
            try:
                os.unlink(root / f"{name}-{old['plan']}.npy")
            except FileNotFoundError:
                pass
