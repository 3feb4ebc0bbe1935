"""ProgEmu checkpoints: a Hugging Face-style directory plus progemu's own ``progemu.json``.

Layout of ``CKPT/`` (docs/architecture.md, "train -> checkpoint")::

    config.json, model.safetensors    transformers.Emu3ForCausalLM (from_pretrained works alone)
    tokenizer.json, tokenizer_config.json, ...   the text tokenizer (PreTrainedTokenizerFast)
    progemu.json                       {"layout": {...}, "mode": ..., "image_tokenizer": "image_tokenizer",
                                        "preset": ..., "train": {...}, "schema": 1}
    image_tokenizer/                   ImageTokenizer.save_pretrained copy: the checkpoint is self-contained

Writes are crash-safe: everything is written into a staging directory beside the target and
then moved in with ``os.replace``; ``progemu.json`` is moved last, so a directory with
``progemu.json`` is always complete (a SIGKILL leaves the previous checkpoint or nothing).

:func:`load_emu3_text_state` reads the text half of an ``Emu3ForConditionalGeneration``
checkpoint (Hugging Face format, both the legacy ``text_model.model.*`` key names of the hub
conversions and transformers 5's ``model.text_model.*``) for ``progemu train --init``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from progemu.model.layout import TokenLayout
from progemu.utils.atomic import atomic_write_json, match_umask

__all__ = ["LoadedCheckpoint", "save_checkpoint", "load_checkpoint", "read_meta", "is_checkpoint",
           "load_emu3_text_state", "PROGEMU_META", "IMAGE_TOKENIZER_DIR"]

PROGEMU_META = "progemu.json"
IMAGE_TOKENIZER_DIR = "image_tokenizer"
SCHEMA = 1


@dataclasses.dataclass
class LoadedCheckpoint:
    """Everything a generator needs: ``model`` (eval mode), tokenizers, layout and ``meta`` (progemu.json)."""

    model: Any  # transformers.Emu3ForCausalLM
    text_tokenizer: Any  # transformers.PreTrainedTokenizerFast
    layout: TokenLayout
    image_tokenizer: Any  # progemu.tokenizer.ImageTokenizer, or None when the checkpoint has none
    meta: dict

    @property
    def mode(self) -> str:
        return self.meta.get("mode", "joint")


def is_checkpoint(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / PROGEMU_META).is_file() and (directory / "config.json").is_file()


def read_meta(directory: str | os.PathLike) -> dict:
    """``progemu.json`` of a checkpoint, with a clear error when it is missing or broken."""
    path = Path(directory) / PROGEMU_META
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {PROGEMU_META}; not a progemu checkpoint (train one with `progemu train`, "
                                "or the save was interrupted: use the newest directory under checkpoints/)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); the checkpoint is damaged") from None
    for key in ("layout", "mode"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}; the checkpoint is damaged or from another program")
    return meta


def save_checkpoint(directory: str | os.PathLike, model, text_tokenizer, layout: TokenLayout, *, mode: str,
                    train_config: dict | None = None, preset: str | None = None, image_tokenizer=None,
                    extra_files: dict[str, Any] | None = None, state_dict: dict | None = None) -> Path:
    """Write a complete checkpoint into ``directory`` (created if needed; other files there are kept).

    ``model``: an ``Emu3ForCausalLM`` (unwrapped: no DDP / FSDP wrapper; its state is saved in
    its current dtype). ``image_tokenizer``: an ``ImageTokenizer`` (saved with its
    ``save_pretrained``), a directory holding one (hard-linked or copied), or ``None``.
    ``extra_files``: name -> callable(path) writing additional files (e.g. the training state)
    into the staging directory before publication. ``state_dict``: full (gathered) weights to
    save instead of ``model``'s own, for FSDP-sharded models.
    """
    from progemu import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory))  # same filesystem: os.replace is atomic
    try:
        model.save_pretrained(staging, safe_serialization=True, **({} if state_dict is None else {"state_dict": state_dict}))
        text_tokenizer.save_pretrained(staging)
        if image_tokenizer is not None:
            if isinstance(image_tokenizer, (str, os.PathLike)):
                _link_or_copy_tree(Path(image_tokenizer), staging / IMAGE_TOKENIZER_DIR)
            else:
                image_tokenizer.save_pretrained(staging / IMAGE_TOKENIZER_DIR)
        for name, writer in (extra_files or {}).items():
            writer(staging / name)
        meta = {"schema": SCHEMA, "progemu_version": __version__, "mode": mode, "preset": preset,
                "layout": layout.to_dict(), "image_tokenizer": IMAGE_TOKENIZER_DIR if image_tokenizer is not None else None,
                "train": train_config or {}}
        atomic_write_json(staging / PROGEMU_META, meta)
        match_umask(staging)  # safetensors writes the weights 0600; outputs follow the umask
        _publish(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_checkpoint(directory: str | os.PathLike, device=None, dtype=None, *, load_image_tokenizer: bool = True) -> LoadedCheckpoint:
    """Load a progemu checkpoint directory (see the module docstring) in eval mode.

    ``device``: e.g. ``"cpu"``, ``"cuda"``; ``None`` = CPU. ``dtype``: e.g. ``torch.bfloat16``;
    ``None`` = as saved. Raises ``FileNotFoundError`` naming the missing file.
    """
    from transformers import AutoTokenizer, Emu3ForCausalLM

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: checkpoint directory not found; train one with `progemu train --out {directory}`")
    meta = read_meta(directory)
    for name in ("config.json",):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: {name} is missing; the checkpoint is incomplete")
    if not any(directory.glob("*.safetensors")):
        raise FileNotFoundError(f"{directory}: no model.safetensors; the checkpoint is incomplete")
    if not (directory / "tokenizer.json").is_file() and not (directory / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{directory}: no tokenizer.json; the text tokenizer was not saved with this checkpoint")
    layout = TokenLayout.from_dict(meta["layout"])
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = Emu3ForCausalLM.from_pretrained(str(directory), **kwargs)
    if model.config.vocab_size < layout.vocab_size:
        raise ValueError(f"{directory}: model vocab_size {model.config.vocab_size} < layout vocab_size {layout.vocab_size}")
    model.to(device or "cpu").eval()
    text_tokenizer = AutoTokenizer.from_pretrained(str(directory))
    image_tokenizer = None
    if load_image_tokenizer and meta.get("image_tokenizer"):
        from progemu.tokenizer import ImageTokenizer

        path = directory / meta["image_tokenizer"]
        if not path.is_dir():
            raise FileNotFoundError(f"{directory}: image tokenizer folder {path.name}/ is missing; copy the image tokenizer "
                                    "used for training there (ImageTokenizer.save_pretrained)")
        image_tokenizer = ImageTokenizer.from_pretrained(path, device=device or "cpu")
    return LoadedCheckpoint(model=model, text_tokenizer=text_tokenizer, layout=layout, image_tokenizer=image_tokenizer, meta=meta)


def load_emu3_text_state(directory: str | os.PathLike):
    """``(Emu3TextConfig, state_dict)`` of the text model in an Emu3 Hugging Face checkpoint.

    ``directory`` holds ``config.json`` with ``model_type`` ``"emu3"`` (``Emu3ForConditionalGeneration``,
    e.g. a local copy of ``Emu3-community/Emu3-Gen-hf``) or ``"emu3_text_model"``
    (``Emu3ForCausalLM``) and safetensors shards. Keys are renamed to ``Emu3ForCausalLM``'s
    (``model.*``, ``lm_head.weight``); the vision tokenizer weights are skipped.
    """
    from safetensors import safe_open
    from transformers import Emu3TextConfig

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json; download Emu3 in Hugging Face format "
                                "(huggingface-cli download Emu3-community/Emu3-Gen-hf --local-dir DIR)")
    raw = json.loads(config_path.read_text(encoding="utf-8"))
    model_type = raw.get("model_type")
    if model_type == "emu3":
        text = dict(raw.get("text_config") or {})
    elif model_type == "emu3_text_model":
        text = dict(raw)
    else:
        raise ValueError(f"{config_path}: model_type {model_type!r} is not an Emu3 model ('emu3' or 'emu3_text_model')")
    text = {k: v for k, v in text.items() if k not in {"model_type", "transformers_version", "architectures"}}
    text["attention_dropout"] = 0.0
    config = Emu3TextConfig(**text)
    index_path = directory / "model.safetensors.index.json"
    if index_path.exists():
        files = sorted(set(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = [p.name for p in sorted(directory.glob("*.safetensors"))]
    missing = [name for name in files if not (directory / name).is_file()]
    if not files or missing:
        raise FileNotFoundError(f"{directory}: safetensors shards missing ({missing or 'none found'}); the download is incomplete")
    state = {}
    for name in files:
        with safe_open(str(directory / name), framework="pt") as handle:
            for key in handle.keys():
                renamed = _text_key(key)
                if renamed is not None:
                    state[renamed] = handle.get_tensor(key)
    return config, state


def _text_key(key: str) -> str | None:
    """Emu3 checkpoint key -> ``Emu3ForCausalLM`` key, ``None`` for vision-tokenizer weights."""
    for old, new in (("text_model.model.", "model."), ("model.text_model.", "model."), ("text_model.lm_head.", "lm_head.")):
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith("lm_head.") or (key.startswith("model.") and not key.startswith("model.vqmodel.")):
        return key
    return None


def _publish(staging: Path, directory: Path) -> None:
    """Move every entry of ``staging`` into ``directory`` (``progemu.json`` last)."""
    names = sorted(p.name for p in staging.iterdir())
    names.sort(key=lambda n: n == PROGEMU_META)
    old_meta = directory / PROGEMU_META
    if old_meta.exists():
        old_meta.unlink()  # the directory is incomplete while files are being replaced
    for name in names:
        source, target = staging / name, directory / name
        if source.is_dir():
            if target.exists():
                trash = Path(tempfile.mkdtemp(prefix=".old-", dir=directory))
                os.replace(target, trash / name)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(source, target)
        else:
            os.replace(source, target)
    _fsync_dir(directory)


def _link_or_copy_tree(source: Path, target: Path) -> None:
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: image tokenizer directory not found")

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
