"""``progemu convert``: the released Emu3 / ProgEmu weights (BAAI's format) as a progemu checkpoint.

:func:`convert` turns BAAI/Emu3-Gen or the official ProgEmu checkpoint (language model, BAAI
config, tiktoken vocabulary) plus BAAI/Emu3-VisionTokenizer into a folder that ``progemu
generate``, ``evaluate``, ``serve``, ``train --init`` and ``ProgEmuPipeline.from_pretrained`` load
as it is. Modules: :mod:`.config` (settings, sampling presets), :mod:`.baai_config` (formats and
configs), :mod:`.baai_tokenizer` (tiktoken -> Hugging Face tokenizer), :mod:`.lm` and :mod:`.vq`
(weight names), :mod:`.safetensors_io` (streaming reads and writes), :mod:`.converter` (the run),
:mod:`.cli`.
"""
from __future__ import annotations

from .config import SAMPLING_PRESETS, ConvertConfig
from .converter import ConvertResult, convert, plan_conversion
from .safetensors_io import WeightFormatError

__all__ = ["ConvertConfig", "ConvertResult", "SAMPLING_PRESETS", "WeightFormatError", "convert", "plan_conversion"]
