"""The vision tokenizer's weights: BAAI's ``Emu3VisionVQModel`` keys -> transformers' ``Emu3VQVAE`` keys.

The two implementations are the same network with a different module tree (compare
``emu3/tokenizer/modeling_emu3visionvq.py`` in baaivision/Emu3 with transformers'
``models/emu3/modeling_emu3.py``):

=============================================  ===================================================
BAAI                                           transformers ``Emu3VQVAE``
=============================================  ===================================================
``encoder.down.I.``                            ``encoder.down_block.down.I.``
``decoder.up.I.``                              ``decoder.up_block.up.I.``
``{en,de}coder.mid.``                          ``{en,de}coder.middle_block.``
``...mid.attn_1.norm.``                        ``...middle_block.attn_norm.``
``...down.I.attn.J.norm.`` (``up`` alike)      ``...down.I.attn_norms.J.``
attention ``q`` / ``k`` / ``v`` / ``proj_out``   ``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``
=============================================  ===================================================

and the attention projections are 1x1 ``Conv2d`` weights ``[C, C, 1, 1]`` in BAAI's model but
``Linear`` weights ``[C, C]`` in transformers' (the same numbers: a 1x1 convolution over channels
is a linear map per pixel). Everything else (``quantize.embedding``, the causal 3-D convolutions'
``.conv.``, the temporal blocks' batch norms) has the same name. Keys of a transformers-format
tokenizer (bare ``Emu3VQVAE`` or ``vqmodel.`` inside a full Emu3 model) only lose their prefix.

:func:`check_vq_tensors` compares the result with an ``Emu3VQVAE`` built from the converted
config on the meta device, so a weight file that does not match its ``config.json`` is reported
before anything is written.
"""
from __future__ import annotations

import re

from .safetensors_io import TensorEntry, WeightFormatError

__all__ = ["vq_key", "check_vq_tensors", "is_attention_projection"]

_ATTENTION = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "proj_out": "out_proj"}
_ATTN_NORM = re.compile(r"\.(down|up)\.(\d+)\.attn\.(\d+)\.norm\.")
_ATTN_PROJ = re.compile(r"(\.attn(?:_1|\.\d+))\.(q|k|v|proj_out)\.(weight|bias)$")


def is_attention_projection(new_key: str) -> bool:
    """True for a transformers key whose BAAI weight is a 1x1 convolution (``[C, C, 1, 1]`` -> ``[C, C]``)."""
    return new_key.endswith(tuple(f".{name}.weight" for name in _ATTENTION.values()))


def vq_key(name: str, fmt: str) -> str | None:
    """transformers ``Emu3VQVAE`` key for a source key (``None``: not a vision-tokenizer weight)."""
    if fmt in ("hf", "hf-full"):
        for prefix in ("model.vqmodel.", "vqmodel."):
            if name.startswith(prefix):
                return name[len(prefix):]
        return name if fmt == "hf" else None
    key = name
    key = _ATTN_NORM.sub(lambda m: f".{m.group(1)}.{m.group(2)}.attn_norms.{m.group(3)}.", key)
    key = key.replace(".mid.attn_1.norm.", ".mid.attn_norm.")
    key = _ATTN_PROJ.sub(lambda m: f"{m.group(1)}.{_ATTENTION[m.group(2)]}.{m.group(3)}", key)
    key = re.sub(r"^encoder\.down\.", "encoder.down_block.down.", key)
    key = re.sub(r"^decoder\.up\.", "decoder.up_block.up.", key)
    key = key.replace(".mid.", ".middle_block.")
    return key


def check_vq_tensors(renamed: dict[str, TensorEntry], config, where: str) -> dict[str, tuple[int, ...]]:
    """The target shape of every renamed key; :class:`WeightFormatError` when the weights do not fit ``config``."""
    import torch
    from transformers import Emu3VQVAE

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Emu3VQVAE(config).state_dict().items()}
    missing = sorted(set(expected) - set(renamed))
    unknown = sorted(set(renamed) - set(expected))
    if missing or unknown:
        detail = f"missing {missing[:3]}" if missing else f"not in the architecture {unknown[:3]}"
        raise WeightFormatError(f"{where}: the vision-tokenizer weights do not match its config.json ({len(missing)} missing, "
                                f"{len(unknown)} unknown: {detail}); download the folder again")
    shapes = {}
    for key, shape in expected.items():
        source = tuple(renamed[key].shape)
        squeezed = source[:2] if is_attention_projection(key) and source[2:] == (1, 1) else source
        if squeezed != shape:
            raise WeightFormatError(f"{renamed[key].file}: {key} has shape {list(source)} but config.json describes "
                                    f"{list(shape)}; the weights belong to another vision tokenizer")
        shapes[key] = shape
    return shapes
