"""Which format a source folder is in, and its ``config.json`` as transformers' Emu3 configs.

Three kinds of ``config.json`` are recognised (``model_type``):

========================  ==================================================  =================
``model_type``            written by                                          format
========================  ==================================================  =================
``"Emu3"``                BAAI's remote code (BAAI/Emu3-Gen, -Stage1, -Chat)  ``baai``
                          and the official ProgEmu training code
``"Emu3VisionVQ"``        BAAI/Emu3-VisionTokenizer                           ``baai``
``"emu3"``                transformers (Emu3-community/Emu3-Gen-hf: text      ``hf``
                          model + ``vq_config``)
``"emu3_text_model"``     transformers ``Emu3ForCausalLM`` (progemu)          ``hf``
``"emu3_vqgan"``          transformers ``Emu3VQVAE``                          ``hf``
========================  ==================================================  =================

BAAI's language-model config maps one to one onto ``Emu3TextConfig`` (the decoder is the same
Llama-style network): ``rope_theta`` / ``rope_scaling`` become transformers 5's
``rope_parameters``; the image special ids (``img_token_id``, ``boi_token_id``, ...) are not part
of the text config, they are checked against the tokenizer instead; ``image_area`` is recorded
as provenance; BAAI's ``pretraining_tp`` (matmuls split into slices: the same product summed in
another order) needs nothing. ``attention_dropout`` is set to 0 as in every progemu preset (eval mode ignores
it; BAAI's 0.1 would make ``progemu train --init`` steps irreproducible). BAAI's VQ config
names (``ch``, ``ch_mult``, ``z_channels``, ``double_z``) map onto ``Emu3VQVAEConfig``'s
(``base_channels``, ``channel_multiplier``, ``latent_channels``, ``double_latent``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .safetensors_io import WeightFormatError

__all__ = ["read_config", "model_format", "vq_format", "text_config_from", "vq_config_from", "BAAI_SPECIAL_IDS"]

#: BAAI config key -> the token it names (the ids are checked against the converted tokenizer)
BAAI_SPECIAL_IDS = {"pad_token_id": "<|endoftext|>", "bos_token_id": "<|extra_203|>", "eos_token_id": "<|extra_204|>",
                    "img_token_id": "<|image token|>", "boi_token_id": "<|image start|>", "eoi_token_id": "<|image end|>",
                    "eol_token_id": "<|extra_200|>", "eof_token_id": "<|extra_201|>"}

_MODEL_HINT = ("point --model at the folder holding config.json and the weight files of BAAI/Emu3-Gen, of the official "
               "ProgEmu checkpoint (Masaaki-75/progemu), or of an Emu3 model in transformers' format")
_VQ_HINT = "point --vision-tokenizer at a local copy of BAAI/Emu3-VisionTokenizer (config.json + model.safetensors)"


def read_config(directory: Path, flag: str, hint: str) -> dict:
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise WeightFormatError(f"{flag} {directory}: folder not found; {hint}")
    if not path.is_file():
        raise WeightFormatError(f"{flag} {directory}: no config.json, so this folder is in neither BAAI's Emu3 format nor "
                                f"transformers'; {hint}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightFormatError(f"{path}: not valid JSON ({error}); download it again") from None
    if not isinstance(raw, dict):
        raise WeightFormatError(f"{path}: expected a JSON object; download it again")
    return raw


def model_format(raw: dict, directory: Path) -> str:
    """``"baai"`` or ``"hf"`` for a language-model folder; :class:`WeightFormatError` otherwise."""
    model_type = raw.get("model_type")
    if model_type == "Emu3":
        return "baai"
    if model_type in ("emu3", "emu3_text_model"):
        return "hf"
    raise WeightFormatError(f"--model {directory}: config.json has model_type {model_type!r}: neither BAAI's Emu3 format "
                            f"('Emu3') nor transformers' ('emu3', 'emu3_text_model'); {_MODEL_HINT}")


def vq_format(raw: dict, directory: Path, flag: str = "--vision-tokenizer") -> str:
    """``"baai"`` (Emu3VisionVQ), ``"hf"`` (emu3_vqgan) or ``"hf-full"`` (an emu3 model holding ``vq_config``)."""
    model_type = raw.get("model_type")
    if model_type == "Emu3VisionVQ":
        return "baai"
    if model_type == "emu3_vqgan":
        return "hf"
    if model_type == "emu3" and isinstance(raw.get("vq_config"), dict):
        return "hf-full"
    raise WeightFormatError(f"{flag} {directory}: config.json has model_type {model_type!r}: not an Emu3 vision tokenizer "
                            f"in BAAI's format ('Emu3VisionVQ') or transformers' ('emu3_vqgan'); {_VQ_HINT}")


def _rope_parameters(raw: dict, where: str) -> dict:
    theta = float(raw.get("rope_theta", 1_000_000.0))
    if isinstance(raw.get("rope_parameters"), dict):
        return dict(raw["rope_parameters"])
    scaling = raw.get("rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return {"rope_type": "default", "rope_theta": theta}
    if kind not in ("linear", "dynamic"):
        raise WeightFormatError(f"{where}: rope_scaling {scaling!r} is not one Emu3 supports ('linear' or 'dynamic')")
    return {"rope_type": kind, "rope_theta": theta, "factor": float(scaling["factor"])}


def text_config_from(raw: dict, fmt: str, where: str):
    """``transformers.Emu3TextConfig`` for a language-model ``config.json`` (BAAI's or transformers')."""
    from transformers import Emu3TextConfig

    source = dict(raw.get("text_config") or {}) if raw.get("model_type") == "emu3" else dict(raw)
    needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [key for key in needed if key not in source]
    if missing:
        raise WeightFormatError(f"{where}: config.json lacks {missing}; it is not a complete Emu3 config: download it again")
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
            "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "mlp_bias", "attention_bias")
    kwargs: dict[str, Any] = {key: source[key] for key in keep if source.get(key) is not None}
    kwargs.setdefault("num_key_value_heads", kwargs["num_attention_heads"])
    kwargs["rope_parameters"] = _rope_parameters(source, where)
    kwargs["attention_dropout"] = 0.0
    kwargs.setdefault("tie_word_embeddings", False)
    return Emu3TextConfig(**kwargs)


def vq_config_from(raw: dict, fmt: str, where: str):
    """``transformers.Emu3VQVAEConfig`` for a vision-tokenizer ``config.json`` (any of the three kinds)."""
    from transformers import Emu3VQVAEConfig

    if fmt == "hf-full":
        raw = dict(raw["vq_config"])
    if fmt in ("hf", "hf-full"):
        return Emu3VQVAEConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "transformers_version",
                                                                           "architectures", "auto_map", "dtype", "torch_dtype")})
    try:
        base, multipliers = int(raw.get("ch", 256)), [int(m) for m in raw.get("ch_mult", [1, 2, 2, 4])]
        kwargs = dict(codebook_size=int(raw.get("codebook_size", 32768)), embed_dim=int(raw.get("embed_dim", 4)),
                      latent_channels=int(raw.get("z_channels", 4)), double_latent=bool(raw.get("double_z", False)),
                      in_channels=int(raw.get("in_channels", 3)), out_channels=int(raw.get("out_channels", 3)),
                      temporal_downsample_factor=int(raw.get("temporal_downsample_factor", 4)), base_channels=base,
                      channel_multiplier=multipliers, num_res_blocks=int(raw.get("num_res_blocks", 2)),
                      attn_resolutions=[int(a) for a in raw.get("attn_resolutions", [3])],
                      hidden_size=base * multipliers[-1], num_attention_heads=1, attention_dropout=0.0)
    except (TypeError, ValueError) as error:
        raise WeightFormatError(f"{where}: config.json has an invalid vision-tokenizer setting ({error}); download it again") from None
    return Emu3VQVAEConfig(**kwargs)
