"""``ImageTokenizer``: greyscale radiographs <-> discrete codes with transformers' ``Emu3VQVAE``.

The wrapper owns no network code: encoding and decoding call ``Emu3VQVAE.encode`` /
``Emu3VQVAE.decode``. What it adds is the radiograph convention of this project and
the bookkeeping other stages rely on:

- images in and out are ``float32 [B, 1, H, W]`` in ``[0, 1]`` (0 = black). Emu3 works on
  ``[-1, 1]`` (its image processor uses mean = std = 0.5), so we map ``x -> 2x - 1`` on the
  way in and back on the way out. A model with 3 input channels (the released Emu3
  tokenizer) gets the grey channel repeated; 3 output channels are averaged to grey.
- codes are ``int64 [B, h, w]`` with ``h = H / downsample``, values in ``[0, codebook_size)``.
- Emu3VQVAE is a video tokenizer: ``encode`` repeats a still image ``temporal_downsample_factor``
  times along time (``[B, T, C, H, W]``) and the temporal convolutions compress it to one
  temporal code, so image codes come back as ``[B, h, w]``; ``decode`` expands one temporal
  code to ``T`` frames and returns the first. Our own presets use ``T = 1`` (see presets).
- ``identity``: a short content hash of the architecture and every weight, stable across
  ``save_pretrained`` / ``from_pretrained``; the code cache is keyed by it.

Loading (:meth:`ImageTokenizer.from_pretrained`) accepts three kinds of local directory:
1. a progemu tokenizer (``save_pretrained``: ``config.json`` + ``model.safetensors`` +
   ``progemu_tokenizer.json``);
2. a bare ``Emu3VQVAE`` in Hugging Face format (``config.json`` with ``model_type: emu3_vqgan``);
3. a full Emu3 model in Hugging Face format (``Emu3-community/Emu3-Gen-hf`` or ``-Chat-hf``):
   only the ``vqmodel.*`` weights are read from its safetensors shards.
The original ``BAAI/Emu3-VisionTokenizer`` repository is remote code with its own
parameter names; transformers converts it once into the ``-hf`` repositories above, which
is what we load.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from progemu.tokenizer.presets import TokenizerConfig, get_preset
from progemu.utils.config import config_from_dict, save_config

__all__ = ["ImageTokenizer", "PROGEMU_TOKENIZER_FILE", "PRETRAINED_HINT"]

PROGEMU_TOKENIZER_FILE = "progemu_tokenizer.json"
PRETRAINED_HINT = (
    "download the Emu3 vision tokenizer in Hugging Face format, e.g. "
    "`huggingface-cli download Emu3-community/Emu3-Gen-hf --local-dir DIR` (only config.json and the "
    "safetensors shards holding `vqmodel.*` are read), or train a domain tokenizer with "
    "`progemu tokenizer train --data DATA --out DIR`"
)


class ImageTokenizer:
    """Greyscale images <-> ``[B, h, w]`` codes through one ``transformers.Emu3VQVAE``."""

    def __init__(self, model, config: TokenizerConfig):
        self.model = model.eval()
        self.config = config.validate()
        self._identity: str | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: TokenizerConfig | str, seed: int = 0) -> "ImageTokenizer":
        """A freshly initialised tokenizer (deterministic under ``seed``)."""
        from transformers import Emu3VQVAE

        if isinstance(config, str):
            config = get_preset(config)
        # fork_rng keeps the caller's global RNG untouched while making init reproducible
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Emu3VQVAE(config.vq_config())
        return cls(model, config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, image_size: int | None = None,
                        device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> "ImageTokenizer":
        """Load a tokenizer from a local directory (see the module docstring for the 3 kinds).

        Raises ``FileNotFoundError`` naming the directory and what to download when it is
        missing or incomplete, ``ValueError`` when it holds something else.
        """
        path = Path(path)
        config_path = path / "config.json"
        if not path.is_dir():
            raise FileNotFoundError(f"image tokenizer directory {path} not found: {PRETRAINED_HINT}")
        if not config_path.exists():
            raise FileNotFoundError(f"{path}: no config.json, so this is not a Hugging Face-format tokenizer: {PRETRAINED_HINT}")
        try:
            raw = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path}: not valid JSON ({error}); re-download or re-train the tokenizer") from None
        model_type = raw.get("model_type")
        if model_type == "emu3_vqgan":
            tokenizer = cls._load_vqvae_dir(path, raw, image_size)
        elif model_type == "emu3":
            tokenizer = cls._load_from_full_emu3(path, raw, image_size)
        else:
            raise ValueError(
                f"{config_path}: model_type {model_type!r} is neither an Emu3VQVAE ('emu3_vqgan') nor a full Emu3 "
                f"model ('emu3'). The original BAAI/Emu3-VisionTokenizer (remote code) must first be converted by "
                f"transformers' convert_emu3_weights_to_hf.py; or {PRETRAINED_HINT}")
        return tokenizer.to(device=device, dtype=dtype)

    @classmethod
    def _load_vqvae_dir(cls, path: Path, raw: dict, image_size: int | None) -> "ImageTokenizer":
        from transformers import Emu3VQVAE, Emu3VQVAEConfig

        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise FileNotFoundError(f"{path}: config.json present but no weights (model.safetensors); the download or "
                                    f"training run is incomplete: {PRETRAINED_HINT}")
        meta_path = path / PROGEMU_TOKENIZER_FILE
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        vq = Emu3VQVAEConfig.from_pretrained(path)
        size = int(image_size or meta.get("image_size") or get_preset("emu3").image_size)
        config = TokenizerConfig.from_vq_config(vq, size, name=str(meta.get("name", "emu3_vqgan")))
        if meta:
            # the saved architecture must agree with config.json: a mismatch means files from two tokenizers
            saved = config_from_dict(TokenizerConfig, {**meta, "image_size": size}, where=str(meta_path))
            if dataclasses.replace(saved, name=config.name) != config:
                raise ValueError(f"{meta_path}: architecture disagrees with {path / 'config.json'}; the directory mixes two "
                                 f"tokenizers — re-save it with ImageTokenizer.save_pretrained")
        model = Emu3VQVAE.from_pretrained(path, dtype=torch.float32)
        return cls(model, config)

    @classmethod
    def _load_from_full_emu3(cls, path: Path, raw: dict, image_size: int | None) -> "ImageTokenizer":
        from safetensors import safe_open
        from transformers import Emu3VQVAE, Emu3VQVAEConfig

        vq_config = Emu3VQVAEConfig(**{k: v for k, v in (raw.get("vq_config") or {}).items()
                                       if k not in {"model_type", "transformers_version"}})
        index_path = path / "model.safetensors.index.json"
        if index_path.exists():
            weight_map = json.loads(index_path.read_text(encoding="utf-8")).get("weight_map", {})
            files = sorted({name for key, name in weight_map.items() if _vq_key(key) is not None})
        else:
            files = [p.name for p in sorted(path.glob("*.safetensors"))]
        missing_files = [name for name in files if not (path / name).exists()]
        if not files or missing_files:
            raise FileNotFoundError(f"{path}: the shards holding the vqmodel weights are missing ({missing_files or 'no safetensors'}): {PRETRAINED_HINT}")
        state: dict[str, torch.Tensor] = {}
        for name in files:
            with safe_open(str(path / name), framework="pt") as handle:
                for key in handle.keys():
                    short = _vq_key(key)
                    if short is not None:
                        state[short] = handle.get_tensor(key)
        model = Emu3VQVAE(vq_config)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise FileNotFoundError(f"{path}: {len(result.missing_keys)} vqmodel weights are missing (e.g. {result.missing_keys[:3]}); "
                                    f"the download is incomplete: {PRETRAINED_HINT}")
        size = int(image_size or get_preset("emu3").image_size)
        return cls(model.float(), TokenizerConfig.from_vq_config(vq_config, size, name="emu3"))

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (transformers) + ``progemu_tokenizer.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        save_config(self.config, path / PROGEMU_TOKENIZER_FILE, kind="ImageTokenizer")
        from progemu.utils.atomic import match_umask

        match_umask(path)  # safetensors writes its file 0600; give it the umask's mode
        return path

    # ------------------------------------------------------------------ properties
    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "ImageTokenizer":
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def identity(self) -> str:
        """16 hex chars of SHA-256 over the architecture and every parameter/buffer (name, dtype, shape, bytes)."""
        if self._identity is None:
            self._identity = self.compute_identity()
        return self._identity

    def refresh_identity(self) -> str:
        """Recompute :attr:`identity` after the weights changed (training)."""
        self._identity = None
        return self.identity

    def compute_identity(self) -> str:
        digest = hashlib.sha256()
        arch = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "name"}
        digest.update(json.dumps(arch, sort_keys=True, default=list).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            # view as bytes so bf16 / fp16 hash without a lossy cast
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------------ encode / decode
    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be float [B, 1, H, W] greyscale in [0, 1]; got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.downsample or width % self.downsample:
            raise ValueError(f"image size {height}x{width} is not a multiple of the tokenizer's downsampling factor "
                             f"{self.downsample}; resize to {self.image_size}x{self.image_size}")
        if images.numel() and (float(images.min()) < -1e-3 or float(images.max()) > 1 + 1e-3):
            raise ValueError(f"images must be in [0, 1]; got range [{float(images.min()):.3g}, {float(images.max()):.3g}]")
        return images

    def to_model_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` in [0, 1] -> the model's input ``[B, in_channels, H, W]`` in [-1, 1]."""
        pixels = images.to(device=self.device, dtype=self.dtype) * 2.0 - 1.0
        if self.config.in_channels == 3:
            pixels = pixels.repeat(1, 3, 1, 1)
        return pixels

    def from_model_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Model output ``[B, out_channels, H, W]`` in ~[-1, 1] -> ``float32 [B, 1, H, W]`` in [0, 1]."""
        grey = pixels.float().mean(dim=1, keepdim=True)
        return ((grey + 1.0) / 2.0).clamp_(0.0, 1.0)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """``float [B, 1, H, W]`` in [0, 1] -> ``int64 [B, H/downsample, W/downsample]`` codes (on CPU).

        ``batch_size`` bounds memory by encoding in chunks (the result is the same).
        """
        images = self._check_images(images)
        if images.shape[0] == 0:
            return torch.zeros((0, *[s // self.downsample for s in images.shape[-2:]]), dtype=torch.long)
        chunks = []
        step = batch_size or images.shape[0]
        for start in range(0, images.shape[0], step):
            pixels = self.to_model_pixels(images[start:start + step])
            sizes = torch.tensor([list(pixels.shape[-2:])] * pixels.shape[0])
            output = self.model.encode(pixels, sizes)
            chunks.append(torch.stack(list(output.image_tokens)).to("cpu", torch.long))
        return torch.cat(chunks)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """``int [B, h, w]`` codes in [0, codebook_size) -> ``float32 [B, 1, 8h, 8w]`` in [0, 1] (on CPU)."""
        codes = torch.as_tensor(codes)
        if codes.ndim != 3:
            raise ValueError(f"codes must be int [B, h, w]; got shape {tuple(codes.shape)}")
        if codes.dtype.is_floating_point:
            raise ValueError(f"codes must be integers; got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must be in [0, {self.codebook_size}); got range [{int(codes.min())}, {int(codes.max())}]")
        if codes.shape[0] == 0:
            return torch.zeros((0, 1, codes.shape[1] * self.downsample, codes.shape[2] * self.downsample))
        chunks = []
        step = batch_size or codes.shape[0]
        for start in range(0, codes.shape[0], step):
            pixels = self.model.decode(codes[start:start + step].to(self.device, torch.long))
            chunks.append(self.from_model_pixels(pixels).cpu())
        return torch.cat(chunks)

    # ------------------------------------------------------------------ differentiable halves (training)
    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantisation latents, with gradients.

        ``pixels``: model input ``[B, in_channels, H, W]`` in [-1, 1] (see :meth:`to_model_pixels`).
        Returns ``[B, embed_dim, h, w]`` (the single temporal code of a still image). The same
        modules and order as ``Emu3VQVAE.encode`` up to its nearest-code search.
        """
        model = self.model
        temporal = model.config.temporal_downsample_factor
        video = pixels.unsqueeze(1).repeat(1, temporal, 1, 1, 1)  # [B, T, C, H, W]
        hidden = model.encoder(video)  # [B, T', latent, h, w]
        hidden = model.quant_conv(hidden.permute(0, 2, 1, 3, 4))  # [B, embed, T', h, w]
        return hidden[:, :, 0]

    def nearest_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, embed_dim, h, w]`` latents -> ``int64 [B, h, w]`` nearest codebook entries (Emu3's quantizer)."""
        return self.model.quantize(latents.unsqueeze(1))[:, 0]

    def decode_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantised vectors ``[B, embed_dim, h, w]`` -> model output ``[B, out_channels, H, W]`` in ~[-1, 1].

        Same modules and order as ``Emu3VQVAE.decode`` after its codebook lookup, so
        ``decode_latents(codebook[codes]) == model.decode(codes)``.
        """
        model = self.model
        quant = quantized.unsqueeze(2)  # [B, embed, T'=1, h, w]
        post_quant = model.post_quant_conv(quant)
        video = model.decoder(post_quant.permute(0, 2, 1, 3, 4), quant.permute(0, 2, 1, 3, 4))
        batch, _, height, width = quantized.shape
        video = video.reshape(batch, model.config.temporal_downsample_factor, model.config.out_channels,
                              height * self.downsample, width * self.downsample)
        return video[:, 0]

    def __repr__(self) -> str:
        return (f"ImageTokenizer(name={self.config.name!r}, image_size={self.image_size}, grid={self.grid}, "
                f"codebook_size={self.codebook_size}, identity={self._identity or '?'})")


def _vq_key(key: str) -> str | None:
    """``vqmodel.encoder.x`` / ``model.vqmodel.encoder.x`` -> ``encoder.x``; other keys -> None."""
    for prefix in ("model.vqmodel.", "vqmodel."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


def describe(tokenizer: ImageTokenizer) -> dict[str, Any]:
    """A JSON-able summary (identity, architecture, grid) written beside code caches and checkpoints."""
    return {
        "identity": tokenizer.identity,
        "image_size": tokenizer.image_size,
        "grid": list(tokenizer.grid),
        "codebook_size": tokenizer.codebook_size,
        "downsample": tokenizer.downsample,
        "config": dataclasses.asdict(tokenizer.config),
    }
