"""The language model's weights: source key -> ``Emu3ForCausalLM`` key, checked against the config.

BAAI's remote-code ``Emu3ForCausalLM`` (and the official ProgEmu ``modeling_ti2ti.py``, which has
the same module tree) names its weights exactly as transformers' ``Emu3ForCausalLM`` does
(``model.embed_tokens.weight``, ``model.layers.N.self_attn.q_proj.weight``, ...,
``lm_head.weight``), so a BAAI key is kept as it is. transformers' ``Emu3ForConditionalGeneration``
stores the text model under ``model.text_model.`` (``text_model.model.`` in the first hub
conversions) and its vision tokenizer under ``model.vqmodel.`` / ``vqmodel.``; those keys are
renamed or left to the vision-tokenizer step. Rotary ``inv_freq`` buffers that old checkpoints
carry are recomputed by transformers and dropped.

:func:`check_lm_tensors` compares every renamed key, shape and the dtype set with the tensors an
``Emu3ForCausalLM`` built from the converted config has (on the meta device: no memory), so a
config that does not describe the weights is reported before anything is written.
"""
from __future__ import annotations

from .safetensors_io import TensorEntry, WeightFormatError

__all__ = ["lm_key", "is_vq_key", "check_lm_tensors"]

_RENAMES = (("model.text_model.", "model."), ("text_model.model.", "model."), ("text_model.lm_head.", "lm_head."))


def is_vq_key(name: str) -> bool:
    return name.startswith(("model.vqmodel.", "vqmodel."))


def lm_key(name: str) -> str | None:
    """``Emu3ForCausalLM`` key for a source key; ``None`` for keys that are not language-model weights."""
    if is_vq_key(name) or name.endswith("rotary_emb.inv_freq"):
        return None
    for old, new in _RENAMES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def check_lm_tensors(renamed: dict[str, TensorEntry], config, where: str) -> None:
    """Raise :class:`WeightFormatError` unless ``renamed`` holds exactly the weights ``config`` describes."""
    import torch
    from transformers import Emu3ForCausalLM

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Emu3ForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        renamed = {k: v for k, v in renamed.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(renamed))
    unknown = sorted(set(renamed) - set(expected))
    if missing:
        raise WeightFormatError(f"{where}: {len(missing)} language-model weights are missing (e.g. {missing[:3]}); the "
                                "download is incomplete or config.json belongs to another model: download the folder again")
    if unknown:
        raise WeightFormatError(f"{where}: {len(unknown)} weights that an Emu3 language model with this config.json does not "
                                f"have (e.g. {unknown[:3]}); config.json belongs to another model")
    for key, shape in expected.items():
        if tuple(renamed[key].shape) != shape:
            raise WeightFormatError(f"{renamed[key].file}: {key} has shape {list(renamed[key].shape)} but config.json "
                                    f"describes {list(shape)}; config.json belongs to another model")
    floats = {entry.dtype for entry in renamed.values()}
    if len(floats) > 1:
        raise WeightFormatError(f"{where}: the language-model weights mix dtypes {sorted(floats)}; progemu keeps the dtype "
                                "and needs one: re-save the checkpoint in one dtype")
