"""One conversion: BAAI / transformers Emu3 folders -> a progemu checkpoint folder.

Output (the layout of :mod:`progemu.model.checkpoint`, so every stage loads it as it is)::

    OUT/config.json                        Emu3TextConfig (model_type emu3_text_model, the weights' dtype)
    OUT/model[-0000i-of-0000N].safetensors Emu3ForCausalLM weights, bytes as in the source
    OUT/model.safetensors.index.json       when there is more than one shard
    OUT/tokenizer.json, tokenizer_config.json, ...   the text tokenizer with BAAI's ids
    OUT/image_tokenizer/                   Emu3VQVAE config.json + model.safetensors + progemu_tokenizer.json
    OUT/progemu.json                       layout (sequential positions), mode "joint", "sampling" preset,
                                           "converted_from" (source files, sizes, SHA-256, progemu version)
    OUT/convert.json                       the ConvertConfig of the run

Order of work: every check that needs no tensor data first (formats, configs, every key and
shape against a meta-device model, shards present and complete, tokenizer ids, codebook vs.
visual vocabulary), then one streaming pass per source file (see
:mod:`progemu.convert.safetensors_io`) into a staging folder inside ``OUT``, published with
``progemu.json`` last: an interrupted run leaves no half checkpoint, and running the same
command again redoes it. A finished output whose recorded sources (paths, sizes, modification
times) and settings are unchanged is left as it is.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .baai_config import (BAAI_SPECIAL_IDS, model_format, read_config, text_config_from, vq_config_from, vq_format)
from .baai_tokenizer import build_text_tokenizer, is_baai_tokenizer_dir, is_hf_tokenizer_dir, tokenizer_files
from .config import SAMPLING_PRESETS, ConvertConfig
from .lm import check_lm_tensors, lm_key
from .safetensors_io import (PlannedTensor, SafetensorsStreamWriter, TensorEntry, WeightFiles, WeightFormatError,
                             copy_bin, copy_safetensors, plan_shards, scan_weights, sha256_file)
from .vq import check_vq_tensors, vq_key

__all__ = ["convert", "ConvertResult", "plan_conversion", "ConversionPlan"]

log = logging.getLogger("progemu.convert")
_VISUAL = re.compile(r"<\|visual token (\d{6})\|>")
_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


@dataclasses.dataclass
class ConversionPlan:
    """Everything decided before any tensor byte is read."""

    config: ConvertConfig
    model_dir: Path
    model_format: str
    model_raw: dict
    weights: WeightFiles
    text_config: Any
    lm: list[PlannedTensor]
    tokenizer_dir: Path
    text_tokenizer: Any
    layout: Any
    vq_dir: Path | None = None
    vq_format: str | None = None
    vq_weights: WeightFiles | None = None
    vq_config: Any = None
    vq: list[PlannedTensor] = dataclasses.field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.source.nbytes for t in self.lm) + sum(t.source.nbytes for t in self.vq)


@dataclasses.dataclass
class ConvertResult:
    out: Path
    seconds: float
    bytes_copied: int
    up_to_date: bool = False
    copy_seconds: float = 0.0  # the streaming pass alone (read, hash, write, fsync of the weights)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_copied / 1e6 / max(self.seconds, 1e-9)


# ------------------------------------------------------------------------------------------- planning
def _ordered(weights: WeightFiles, keep) -> list[tuple[str, TensorEntry]]:
    """``(new name, entry)`` for the kept tensors, in file order then byte order (the streaming order)."""
    order = {path: index for index, path in enumerate(weights.files)}
    pairs = [(keep(entry.name), entry) for entry in weights.tensors.values()]
    pairs = [(name, entry) for name, entry in pairs if name is not None]
    return sorted(pairs, key=lambda pair: (order[pair[1].file], pair[1].begin))


def _plan_lm(model_dir: Path, weights: WeightFiles, text_config) -> list[PlannedTensor]:
    pairs = _ordered(weights, lm_key)
    renamed = dict(pairs)
    check_lm_tensors(renamed, text_config, f"--model {model_dir}")
    if text_config.tie_word_embeddings:
        pairs = [(name, entry) for name, entry in pairs if name != "lm_head.weight"]
    return [PlannedTensor(name, entry.dtype, entry.shape, entry) for name, entry in pairs]


def _plan_vq(vq_dir: Path, fmt: str, weights: WeightFiles, vq_config) -> list[PlannedTensor]:
    pairs = _ordered(weights, lambda name: vq_key(name, fmt))
    shapes = check_vq_tensors(dict(pairs), vq_config, f"--vision-tokenizer {vq_dir}")
    return [PlannedTensor(name, entry.dtype, shapes[name], entry) for name, entry in pairs]


def _scan(directory: Path, flag: str) -> WeightFiles:
    weights = scan_weights(directory, "model" if flag == "--model" else "vision-tokenizer")
    if weights is None:
        raise WeightFormatError(f"{flag} {directory}: config.json but no weight files (*.safetensors or *.bin); the "
                                "download is incomplete: download the weight files into the same folder")
    return weights


def _tokenizer_dir(config: ConvertConfig, model_dir: Path) -> Path:
    if config.tokenizer:
        directory = Path(config.tokenizer)
        if not directory.is_dir():
            raise WeightFormatError(f"--tokenizer {directory}: folder not found")
        return directory
    if is_baai_tokenizer_dir(model_dir) or is_hf_tokenizer_dir(model_dir):
        return model_dir
    raise WeightFormatError(f"--model {model_dir}: holds no text tokenizer (emu3.tiktoken or tokenizer.json), as checkpoints "
                            "saved by the official ProgEmu training code do; pass --tokenizer with a local copy of BAAI/Emu3-Gen")


def _check_special_ids(raw: dict, tokenizer, where: str) -> None:
    """The ids a BAAI config names must be the tokenizer's (else config and tokenizer are from different models)."""
    source = raw.get("text_config", raw) if raw.get("model_type") == "emu3" else raw
    for key, token in BAAI_SPECIAL_IDS.items():
        if source.get(key) is None:
            continue
        actual = tokenizer.convert_tokens_to_ids(token)
        if actual != source[key]:
            raise WeightFormatError(f"{where}: config.json says {key}={source[key]} but the tokenizer gives {token} id "
                                    f"{actual}; the tokenizer belongs to another model: pass the matching --tokenizer")


def _visual_vocabulary(tokenizer) -> tuple[int, int]:
    """(offset, count) of the consecutive ``<|visual token NNNNNN|>`` ids of ``tokenizer``."""
    vocab = tokenizer.get_vocab()
    codes = sorted((int(m.group(1)), index) for name, index in vocab.items() if (m := _VISUAL.fullmatch(name)))
    if not codes:
        return 0, 0
    offset = codes[0][1]
    if any(code != k or index != offset + k for k, (code, index) in enumerate(codes)):
        raise WeightFormatError("the text tokenizer's visual tokens are not numbered consecutively; it is not Emu3's")
    return offset, len(codes)


def _resolve_vq(config: ConvertConfig, model_dir: Path, model_raw: dict) -> tuple[Path | None, dict | None]:
    if config.vision_tokenizer:
        directory = Path(config.vision_tokenizer)
        return directory, read_config(directory, "--vision-tokenizer", "point it at a local copy of BAAI/Emu3-VisionTokenizer")
    if model_raw.get("model_type") == "emu3" and isinstance(model_raw.get("vq_config"), dict):
        return model_dir, model_raw
    return None, None


def plan_conversion(config: ConvertConfig) -> ConversionPlan:
    """Check the sources and decide every output tensor (reads headers and configs, no tensor data)."""
    from progemu.model.layout import TokenLayout

    config.validate()
    model_dir = Path(config.model)
    hint = "point it at the folder holding config.json and the weight files (BAAI/Emu3-Gen or the official ProgEmu checkpoint)"
    raw = read_config(model_dir, "--model", hint)
    fmt = model_format(raw, model_dir)
    weights = _scan(model_dir, "--model")
    text_config = text_config_from(raw, fmt, f"--model {model_dir}")
    lm = _plan_lm(model_dir, weights, text_config)
    tokenizer_dir = _tokenizer_dir(config, model_dir)
    tokenizer = build_text_tokenizer(tokenizer_dir, text_config.max_position_embeddings)
    _check_special_ids(raw, tokenizer, f"--model {model_dir}")
    offset, n_visual = _visual_vocabulary(tokenizer)
    plan = ConversionPlan(config, model_dir, fmt, raw, weights, text_config, lm, tokenizer_dir, tokenizer, None)
    vq_dir, vq_raw = _resolve_vq(config, model_dir, raw)
    if vq_dir is not None:
        plan.vq_dir, plan.vq_format = vq_dir, vq_format(vq_raw, vq_dir)
        plan.vq_config = vq_config_from(vq_raw, plan.vq_format, f"--vision-tokenizer {vq_dir}")
        plan.vq_weights = weights if vq_dir == model_dir else _scan(vq_dir, "--vision-tokenizer")
        plan.vq = _plan_vq(vq_dir, plan.vq_format, plan.vq_weights, plan.vq_config)
        codebook = int(plan.vq_config.codebook_size)
        downsample = 2 ** (len(plan.vq_config.channel_multiplier) - 1)
    else:
        codebook, downsample = n_visual, 8
        log.warning("no vision tokenizer given: the output serves `progemu train --init` only (generate, evaluate and serve "
                    "need one: pass --vision-tokenizer BAAI/Emu3-VisionTokenizer)")
    if codebook != n_visual or offset + codebook > text_config.vocab_size:
        raise WeightFormatError(
            f"--vision-tokenizer {vq_dir}: its codebook has {codebook} codes but the model's visual vocabulary has "
            f"{n_visual} tokens (ids {offset}..{offset + n_visual - 1} of the tokenizer, vocab_size {text_config.vocab_size}); "
            "the vision tokenizer belongs to another model: use the one the model was trained with (BAAI/Emu3-VisionTokenizer "
            "for Emu3 and ProgEmu)")
    if config.image_size % downsample:
        raise WeightFormatError(f"--image-size {config.image_size}: not a multiple of the vision tokenizer's downsampling "
                                f"factor {downsample}")
    side = config.image_size // downsample
    plan.layout = TokenLayout.from_tokenizer(tokenizer, (side, side), codebook)
    return plan


# ------------------------------------------------------------------------------------------- provenance
def _fingerprint(plan: ConversionPlan) -> list[dict]:
    """Source files with size and mtime (cheap; decides whether an existing output is up to date)."""
    files = list(plan.weights.files) + [plan.model_dir / "config.json"] + tokenizer_files(plan.tokenizer_dir)
    if plan.vq_dir is not None:
        files += [plan.vq_dir / "config.json"] + (list(plan.vq_weights.files) if plan.vq_weights is not plan.weights else [])
    seen, rows = set(), []
    for path in files:
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        stat = resolved.stat()
        rows.append({"path": str(resolved), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return rows


def _up_to_date(out: Path, plan: ConversionPlan) -> bool:
    path = out / "progemu.json"
    if not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    record = meta.get("converted_from") or {}
    settings = {k: v for k, v in dataclasses.asdict(plan.config).items() if k not in ("overwrite", "out")}
    return record.get("fingerprint") == _fingerprint(plan) and record.get("settings") == settings


# ------------------------------------------------------------------------------------------- writing
def _open_writers(directory: Path, planned: list[PlannedTensor], max_bytes: int, stem: str):
    shards = plan_shards(planned, max_bytes)
    names = [f"{stem}.safetensors"] if len(shards) == 1 else \
        [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    writers, routes = [], {}
    for name, shard in zip(names, shards):
        writer = SafetensorsStreamWriter(directory / name, shard)
        writers.append(writer)
        for tensor in shard:
            routes[tensor.source] = writer
    return names, shards, writers, routes


def _write_index(directory: Path, names: list[str], shards: list[list[PlannedTensor]]) -> None:
    from progemu.utils.atomic import atomic_write_json

    if len(names) < 2:
        return
    weight_map = {tensor.name: name for name, shard in zip(names, shards) for tensor in shard}
    total = sum(tensor.source.nbytes for shard in shards for tensor in shard)
    atomic_write_json(directory / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _stream(plan: ConversionPlan, routes: dict[TensorEntry, SafetensorsStreamWriter], progress) -> dict[Path, str]:
    """Copy every routed tensor, one pass per source file; returns SHA-256 per weight file (when hashing)."""
    files: list[Path] = []
    for weights in (plan.weights, plan.vq_weights):
        for path in (weights.files if weights is not None else []):
            if path not in files:
                files.append(path)
    digests: dict[Path, str] = {}
    for path in files:
        file_routes = [(entry, writer) for entry, writer in routes.items() if entry.file == path]
        if path.suffix == ".safetensors":
            digest = copy_safetensors(path, file_routes, on_bytes=progress, hash_file=plan.config.hash_sources)
        else:
            copy_bin(path, file_routes, on_bytes=progress)
            digest = sha256_file(path) if plan.config.hash_sources else None
        if digest:
            digests[path.resolve()] = digest
    return digests


def _write_text_config(staging: Path, plan: ConversionPlan) -> None:
    config = plan.text_config
    dtypes = {t.dtype for t in plan.lm}
    config.dtype = _DTYPE_NAMES.get(next(iter(dtypes)), "float32")
    config.architectures = ["Emu3ForCausalLM"]
    config.save_pretrained(staging)


def _write_vq(staging: Path, plan: ConversionPlan, max_bytes: int):
    from progemu.tokenizer.presets import TokenizerConfig
    from progemu.tokenizer.vqvae import PROGEMU_TOKENIZER_FILE
    from progemu.utils.config import save_config

    folder = staging / "image_tokenizer"
    folder.mkdir()
    plan.vq_config.save_pretrained(folder)
    tokenizer_config = TokenizerConfig.from_vq_config(plan.vq_config, plan.config.image_size, name="emu3")
    save_config(tokenizer_config, folder / PROGEMU_TOKENIZER_FILE, kind="ImageTokenizer")
    return _open_writers(folder, plan.vq, max(max_bytes, plan.nbytes), "model")


def _provenance(plan: ConversionPlan, digests: dict[Path, str]) -> dict:
    from progemu import __version__

    def describe(role: str, directory: Path | None, fmt: str | None, files: list[Path]) -> dict | None:
        if directory is None:
            return None
        rows = []
        for path in files:
            resolved = path.resolve()
            digest = digests.get(resolved) or (sha256_file(resolved) if plan.config.hash_sources else None)
            rows.append({"name": path.name, "bytes": resolved.stat().st_size, "sha256": digest})
        return {"role": role, "path": str(directory.resolve()), "format": fmt, "files": rows}

    settings = {k: v for k, v in dataclasses.asdict(plan.config).items() if k not in ("overwrite", "out")}
    raw = plan.model_raw
    vq_files = [] if plan.vq_dir is None else [plan.vq_dir / "config.json", *plan.vq_weights.files]
    tokenizer_format = "baai" if is_baai_tokenizer_dir(plan.tokenizer_dir) else "hf"
    return {"progemu_version": __version__, "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": settings, "fingerprint": _fingerprint(plan),
            "model": describe("model", plan.model_dir, plan.model_format, [plan.model_dir / "config.json", *plan.weights.files]),
            "tokenizer": describe("tokenizer", plan.tokenizer_dir, tokenizer_format, tokenizer_files(plan.tokenizer_dir)),
            "vision_tokenizer": describe("vision_tokenizer", plan.vq_dir, plan.vq_format, vq_files),
            "source_config": {k: raw.get(k) for k in ("model_type", "image_area", "max_position_embeddings", "rope_theta",
                                                       "architectures") if k in raw}}


def _progemu_meta(plan: ConversionPlan, provenance: dict) -> dict:
    from progemu import __version__
    from progemu.model.checkpoint import SCHEMA

    sampling, note = SAMPLING_PRESETS[plan.config.sampling]
    meta = {"schema": SCHEMA, "progemu_version": __version__, "mode": "joint", "preset": None,
            "layout": plan.layout.to_dict(), "image_tokenizer": "image_tokenizer" if plan.vq else None, "train": {},
            "converted_from": provenance}
    if sampling:
        meta["sampling"] = dict(sampling)
        meta["sampling_note"] = note
    return meta


def _clear_old_weights(out: Path, keep: set[str]) -> None:
    """Remove weight files of an earlier checkpoint in ``out`` that the new one does not have (after progemu.json)."""
    (out / "progemu.json").unlink(missing_ok=True)
    for path in [*out.glob("model*.safetensors"), out / "model.safetensors.index.json"]:
        if path.is_file() and path.name not in keep:
            path.unlink()


def _write(plan: ConversionPlan, out: Path) -> float:
    """Write the output through a staging folder; returns the seconds of the weight-streaming pass."""
    from progemu.model.checkpoint import _publish
    from progemu.utils.atomic import atomic_write_json, match_umask
    from progemu.utils.config import save_config

    max_bytes = int(plan.config.max_shard_gb * 1e9)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    writers: list[SafetensorsStreamWriter] = []
    try:
        names, shards, lm_writers, routes = _open_writers(staging, plan.lm, max_bytes, "model")
        writers += lm_writers
        if plan.vq:
            _, _, vq_writers, vq_routes = _write_vq(staging, plan, max_bytes)
            writers += vq_writers
            routes.update(vq_routes)
        clock = time.perf_counter()
        with _ProgressBar(plan.nbytes) as bar:
            digests = _stream(plan, routes, bar.update)
        for writer in writers:
            writer.close()
        copy_seconds = time.perf_counter() - clock
        _write_index(staging, names, shards)
        _write_text_config(staging, plan)
        plan.text_tokenizer.save_pretrained(staging)
        save_config(plan.config, staging / "convert.json", kind="ConvertConfig")
        atomic_write_json(staging / "progemu.json", _progemu_meta(plan, _provenance(plan, digests)))
        match_umask(staging)
        _clear_old_weights(out, set(names))
        _publish(staging, out)
    finally:
        for writer in writers:
            writer.handle.close()
        shutil.rmtree(staging, ignore_errors=True)
    return copy_seconds


class _ProgressBar:
    """tqdm over bytes on stderr (silent when stderr is not a terminal)."""

    def __init__(self, total: int):
        self.total = total

    def __enter__(self):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, unit="B", unit_scale=True, desc="converting", leave=False, disable=None)
        return self

    def update(self, count: int) -> None:
        self.bar.update(count)

    def __exit__(self, *exc):
        self.bar.close()


def convert(config: ConvertConfig) -> ConvertResult:
    """Run one conversion (see the module docstring); the caller holds the output lock."""
    from progemu.utils.checks import UsageError

    clock = time.perf_counter()
    plan = plan_conversion(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".staging-*"):  # left by a killed run; the caller's lock excludes a live one
        shutil.rmtree(stale, ignore_errors=True)
    if _up_to_date(out, plan):
        log.info("%s is up to date with its sources; nothing to do", out)
        return ConvertResult(out, time.perf_counter() - clock, 0, up_to_date=True)
    if (out / "progemu.json").exists() and not config.overwrite:
        raise UsageError(f"--out {out}: already holds a checkpoint converted from other sources or settings; choose another "
                         "--out or pass --overwrite to replace it")
    copy_seconds = _write(plan, out)
    seconds = time.perf_counter() - clock
    log.info("converted %.2f GB of weights into %s in %.1f s (weights streamed at %.0f MB/s)", plan.nbytes / 1e9, out,
             seconds, plan.nbytes / 1e6 / max(copy_seconds, 1e-9))
    return ConvertResult(out, seconds, plan.nbytes, copy_seconds=copy_seconds)
