"""Weight files read and written tensor by tensor, so a conversion holds about one chunk in memory.

**Reading.** :func:`scan_weights` finds the weights of a model folder in any of the four layouts
Hugging Face tools write (``model.safetensors``, ``model-0000i-of-0000N.safetensors`` +
``model.safetensors.index.json``, ``pytorch_model.bin``, ``pytorch_model-0000i-of-0000N.bin`` +
``pytorch_model.bin.index.json``) and lists every tensor (name, dtype, shape, file, byte range)
without reading any tensor data. A shard named by the index but absent, a safetensors file
shorter than its header says (an interrupted download), and a header that is not safetensors are
reported naming the file and what to do.

**Writing.** :class:`SafetensorsStreamWriter` writes one safetensors file whose header (names,
dtypes, shapes, offsets) is planned up front, then receives the tensor bytes in order, chunk by
chunk. :func:`copy_safetensors` moves each planned tensor's byte range into its writer inside the
kernel (``copy_file_range``; a user-space buffer where that is missing) while a second thread
reads the file once for its SHA-256 (the same digest the Hugging Face hub shows for each file).
A tensor's bytes are never changed: a
conversion only renames keys and drops unit dimensions (a 1x1 convolution ``[C, C, 1, 1]`` and
the ``[C, C]`` linear weight have the same bytes), so dtypes are kept exactly.

Why not ``safetensors.torch.save_file`` / ``safe_open``: ``save_file`` needs every tensor of a
file in memory at once, and ``safe_open`` maps the file (touched pages count as resident memory)
and does not expose byte offsets. The format itself is simple and fixed (8-byte little-endian
header length, a JSON header, then the raw data; https://github.com/huggingface/safetensors);
the files written here are read back with ``safetensors.safe_open`` and transformers in the tests.
``.bin`` files (torch pickles) are opened with ``torch.load(mmap=True, weights_only=True)``, one
shard at a time, so memory stays within one shard.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["TensorEntry", "WeightFiles", "WeightFormatError", "scan_weights", "SafetensorsStreamWriter",
           "copy_safetensors", "copy_bin", "sha256_file", "DTYPE_SIZES", "CHUNK_BYTES"]

#: safetensors dtype name -> bytes per element
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
#: bytes read per system call when streaming (large enough for full disk speed, small in memory)
CHUNK_BYTES = 64 << 20
_MAX_HEADER = 100 << 20
_COPY_FILE_RANGE = [hasattr(os, "copy_file_range")]  # cleared after the first refusal (old kernel, other filesystem)


class WeightFormatError(ValueError):
    """A weight file or folder that cannot be read as it is (names the file and what to do)."""


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One tensor of a source folder: ``begin`` / ``end`` are absolute byte offsets in ``file``
    (safetensors; ``-1`` for ``.bin``, whose tensors are read through torch)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


@dataclasses.dataclass
class WeightFiles:
    """The weight files of a folder (``kind`` ``"safetensors"`` or ``"bin"``) and their tensors by name."""

    directory: Path
    kind: str
    files: list[Path]
    tensors: dict[str, TensorEntry]

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.tensors.values())

    def dtypes(self) -> set[str]:
        return {entry.dtype for entry in self.tensors.values()}


# ----------------------------------------------------------------------------------------- reading
def scan_weights(directory: str | os.PathLike, what: str = "model") -> WeightFiles | None:
    """The weight files in ``directory`` with every tensor's metadata, or ``None`` when there are none.

    safetensors is preferred when a folder holds both formats. Raises :class:`WeightFormatError`
    for a missing shard, a truncated or foreign file.
    """
    directory = Path(directory)
    for kind, index_name, pattern in (("safetensors", "model.safetensors.index.json", "*.safetensors"),
                                      ("bin", "pytorch_model.bin.index.json", "*.bin")):
        index_path = directory / index_name
        if index_path.is_file():
            files = _files_from_index(index_path, what)
        else:
            files = sorted(p for p in directory.glob(pattern) if p.is_file() and not p.name.startswith("."))
            if kind == "bin":
                files = [p for p in files if p.name.startswith("pytorch_model") or p.name == "model.bin"] or files
                files = [p for p in files if p.name not in ("training_args.bin", "optimizer.bin", "scheduler.bin")]
        if not files:
            continue
        tensors: dict[str, TensorEntry] = {}
        for path in files:
            entries = _safetensors_entries(path, what) if kind == "safetensors" else _bin_entries(path, what)
            for entry in entries:
                if entry.name in tensors:
                    raise WeightFormatError(f"{path}: tensor {entry.name!r} also stored in {tensors[entry.name].file.name}; "
                                            f"the {what} folder mixes two checkpoints: keep one set of weight files")
                tensors[entry.name] = entry
        if index_path.is_file():
            _check_index_keys(index_path, tensors, what)
        return WeightFiles(directory=directory, kind=kind, files=files, tensors=tensors)
    return None


def _files_from_index(index_path: Path, what: str) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise WeightFormatError(f"{index_path}: not a valid shard index ({error}); download it again") from None
    names = sorted(set(weight_map.values()))
    missing = [name for name in names if not (index_path.parent / name).is_file()]
    if missing:
        raise WeightFormatError(f"{index_path.parent}: {len(missing)} of the {len(names)} {what} weight shards listed in "
                                f"{index_path.name} are missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                                "the download is incomplete: download the missing files into the same folder")
    return [index_path.parent / name for name in names]


def _check_index_keys(index_path: Path, tensors: dict[str, TensorEntry], what: str) -> None:
    weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    for key, name in weight_map.items():
        entry = tensors.get(key)
        if entry is None or entry.file.name != name:
            raise WeightFormatError(f"{index_path.parent / name}: the {what} tensor {key!r} listed for it in "
                                    f"{index_path.name} is not in that file; the shard belongs to another download: "
                                    "download the folder again")


def _safetensors_entries(path: Path, what: str) -> list[TensorEntry]:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise WeightFormatError(f"{path}: truncated safetensors file ({size} bytes); the download was interrupted: "
                                    f"download this {what} file again")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER or length > size - 8:
            if length <= _MAX_HEADER:
                raise WeightFormatError(f"{path}: truncated safetensors file ({size} bytes, its header alone needs "
                                        f"{length + 8}); the download was interrupted: download this {what} file again")
            raise WeightFormatError(f"{path}: not a safetensors file (header length {length}); download it again")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightFormatError(f"{path}: damaged safetensors header ({error}); download this {what} file again") from None
    start = 8 + length
    entries, needed = [], start
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise WeightFormatError(f"{path}: damaged safetensors header entry {name!r}; download this {what} file again") from None
        if dtype not in DTYPE_SIZES:
            raise WeightFormatError(f"{path}: tensor {name!r} has dtype {dtype!r}, which progemu cannot convert")
        entry = TensorEntry(name, dtype, shape, path, start + int(begin), start + int(end))
        if entry.end - entry.begin != entry.nbytes:
            raise WeightFormatError(f"{path}: tensor {name!r} spans {entry.end - entry.begin} bytes but its shape "
                                    f"{list(shape)} x {dtype} needs {entry.nbytes}; the file is damaged: download it again")
        entries.append(entry)
        needed = max(needed, entry.end)
    if needed > size:
        raise WeightFormatError(f"{path}: truncated safetensors file ({size:,} bytes, its header lists {needed:,}); "
                                f"the download was interrupted: download this {what} file again")
    return sorted(entries, key=lambda e: e.begin)


_TORCH_TO_SAFETENSORS = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                         "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
                         "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


def _load_bin(path: Path, what: str) -> dict:
    import pickle
    import zipfile

    import torch

    try:
        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as error:
        reason = " ".join(str(error).split())[:200]
        raise WeightFormatError(f"{path}: cannot read this .bin weight file ({reason}); it is truncated or damaged: "
                                f"download this {what} file again") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightFormatError(f"{path}: not a state dict of tensors; expected weights saved with torch.save(model.state_dict())")
    return state


def _bin_entries(path: Path, what: str) -> list[TensorEntry]:
    state = _load_bin(path, what)
    entries = []
    for name, tensor in state.items():
        dtype = _TORCH_TO_SAFETENSORS.get(str(tensor.dtype).removeprefix("torch."))
        if dtype is None:
            raise WeightFormatError(f"{path}: tensor {name!r} has dtype {tensor.dtype}, which progemu cannot convert")
        entries.append(TensorEntry(name, dtype, tuple(tensor.shape), path, -1, -1))
    del state
    return entries


def sha256_file(path: Path, chunk: int = CHUNK_BYTES) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- writing
@dataclasses.dataclass(frozen=True)
class PlannedTensor:
    """A tensor of an output file: its new ``name`` / ``shape`` and where its bytes come from."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: TensorEntry


class SafetensorsStreamWriter:
    """One safetensors file written front to back; tensors arrive in the planned order.

    ``path`` is written in place (callers write into a staging folder). :meth:`close` checks
    that every planned byte arrived, flushes and fsyncs.
    """

    def __init__(self, path: Path, tensors: list[PlannedTensor], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.tensors = tensors
        header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        for tensor in tensors:
            size = math.prod(tensor.shape) * DTYPE_SIZES[tensor.dtype]
            if size != tensor.source.nbytes:
                raise ValueError(f"{tensor.name}: new shape {list(tensor.shape)} does not hold the {tensor.source.nbytes} "
                                 f"bytes of {tensor.source.name}")
            header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
        self.total = offset
        self.written = 0
        self.handle = open(self.path, "wb", buffering=0)  # unbuffered: write() and copy_file_range share one offset
        self._write_all(memoryview(struct.pack("<Q", len(raw)) + raw))

    def _write_all(self, data: memoryview) -> None:
        while len(data):
            data = data[self.handle.write(data):]

    def write(self, data) -> None:
        if self.written + len(data) > self.total:
            raise RuntimeError(f"{self.path}: more tensor bytes than planned")
        self._write_all(memoryview(data).cast("B"))
        self.written += len(data)

    def copy_from(self, source_fd: int, offset: int, count: int) -> None:
        """Append ``count`` bytes of the file ``source_fd`` from ``offset``: in the kernel (``copy_file_range``)
        where the platform has it, else through a user-space buffer."""
        if self.written + count > self.total:
            raise RuntimeError(f"{self.path}: more tensor bytes than planned")
        done = 0
        if _COPY_FILE_RANGE[0]:
            try:
                while done < count:
                    step = os.copy_file_range(source_fd, self.handle.fileno(), count - done, offset + done)
                    if step == 0:
                        raise WeightFormatError(f"{self.path}: the source file ended early while being copied")
                    done += step
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                _COPY_FILE_RANGE[0] = False  # e.g. an old kernel or a filesystem without it: copy through memory
        while done < count:
            data = os.pread(source_fd, min(CHUNK_BYTES, count - done), offset + done)
            if not data:
                raise WeightFormatError(f"{self.path}: the source file ended early while being copied")
            self._write_all(memoryview(data))
            done += len(data)
        self.written += count

    def close(self) -> None:
        if self.handle.closed:
            return
        try:
            if self.written != self.total:
                raise RuntimeError(f"{self.path}: wrote {self.written} of {self.total} planned bytes")
            self.handle.flush()
            os.fsync(self.handle.fileno())
        finally:
            self.handle.close()


def copy_safetensors(path: Path, routes: list[tuple[TensorEntry, SafetensorsStreamWriter]],
                     on_bytes: Callable[[int], None] | None = None, hash_file: bool = True) -> str | None:
    """Copy each routed tensor of ``path`` to its writer and return the file's SHA-256 (``None`` if not hashing).

    ``routes``: ``(entry, writer)`` pairs of tensors stored in ``path``; within one writer they
    must come in ascending offset order (the planner sorts them). The tensor bytes move in the
    kernel (``copy_file_range``) while a worker thread reads the file front to back for the digest
    (``hashlib`` and file reads release the GIL): the disk is read once, the pages the first reader
    brings in serve the second, and memory holds one 64 MB hashing buffer.
    """
    from concurrent.futures import ThreadPoolExecutor

    routes = sorted(routes, key=lambda route: route[0].begin)
    with open(path, "rb", buffering=0) as source, ThreadPoolExecutor(max_workers=1) as worker:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(source.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger read-ahead
        digest = worker.submit(sha256_file, path) if hash_file else None
        for entry, writer in routes:
            for start in range(entry.begin, entry.end, 4 * CHUNK_BYTES):
                count = min(4 * CHUNK_BYTES, entry.end - start)
                writer.copy_from(source.fileno(), start, count)
                if on_bytes is not None:
                    on_bytes(count)
        return digest.result() if digest is not None else None


def copy_bin(path: Path, routes: list[tuple[TensorEntry, SafetensorsStreamWriter]],
             on_bytes: Callable[[int], None] | None = None) -> None:
    """Write the routed tensors of one ``.bin`` shard (opened memory-mapped) to their writers."""
    import torch

    state = _load_bin(path, "model")
    try:
        for entry, writer in routes:
            tensor = state[entry.name].contiguous().reshape(-1)
            raw = tensor.view(torch.uint8) if tensor.numel() else tensor
            for start in range(0, raw.numel(), CHUNK_BYTES):
                piece = raw[start:start + CHUNK_BYTES].numpy()
                writer.write(memoryview(piece).cast("B"))
                if on_bytes is not None:
                    on_bytes(len(piece))
            del tensor, raw
    finally:
        del state


def plan_shards(tensors: Iterable[PlannedTensor], max_bytes: int) -> list[list[PlannedTensor]]:
    """Group tensors (in the given order) into files of at most ``max_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[PlannedTensor]] = []
    current: list[PlannedTensor] = []
    size = 0
    for tensor in tensors:
        if current and size + tensor.source.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(tensor)
        size += tensor.source.nbytes
    if current:
        shards.append(current)
    return shards
