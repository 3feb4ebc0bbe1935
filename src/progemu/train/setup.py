"""Where a training run's model, text tokenizer and layout come from.

Four sources, in this order of precedence:

1. ``--resume``: the newest complete step checkpoint in ``OUT/checkpoints/`` (everything,
   including the text tokenizer trained at the start of the run);
2. ``--init DIR`` holding a progemu checkpoint (fine-tune it, e.g. in another mode);
3. ``--init DIR`` holding Emu3 in Hugging Face format (``Emu3ForConditionalGeneration`` or
   ``Emu3ForCausalLM``): its text model and its tokenizer (``--text-tokenizer`` may point
   elsewhere when DIR holds no tokenizer);
4. nothing: a fresh ``Emu3ForCausalLM`` of ``--preset`` with a BPE trained on the training
   split's prompts and interpretations (small presets) or Emu3's tokenizer (``emu3-8b``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from progemu.model.checkpoint import is_checkpoint, load_emu3_text_state, read_meta
from progemu.model.layout import TokenLayout
from progemu.model.presets import get_preset, text_config

__all__ = ["ModelBundle", "build_model_bundle", "check_layout"]


class ModelBundle:
    """``model`` (float32 ``Emu3ForCausalLM`` on CPU), ``text_tokenizer``, ``layout``, ``source`` (str)."""

    def __init__(self, model, text_tokenizer, layout: TokenLayout, source: str):
        self.model, self.text_tokenizer, self.layout, self.source = model, text_tokenizer, layout, source


def check_layout(layout: TokenLayout, image_tokenizer, where: str) -> None:
    if tuple(layout.grid) != tuple(image_tokenizer.grid) or layout.codebook_size != image_tokenizer.codebook_size:
        raise ValueError(f"{where}: the model's layout expects a {layout.grid_h}x{layout.grid_w} grid with codebook "
                         f"{layout.codebook_size}, the image tokenizer gives {tuple(image_tokenizer.grid)} with codebook "
                         f"{image_tokenizer.codebook_size}; use the image tokenizer the model was trained with")


def _from_progemu_checkpoint(directory: Path, image_tokenizer, source: str) -> ModelBundle:
    from transformers import AutoTokenizer, Emu3ForCausalLM

    meta = read_meta(directory)
    layout = TokenLayout.from_dict(meta["layout"])
    check_layout(layout, image_tokenizer, str(directory))
    model = Emu3ForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    return ModelBundle(model, AutoTokenizer.from_pretrained(str(directory)), layout, source)


def _from_emu3(directory: Path, image_tokenizer, text_tokenizer_dir: str | None) -> ModelBundle:
    from transformers import Emu3ForCausalLM

    from progemu.model.text_tokenizer import load_text_tokenizer

    config, state = load_emu3_text_state(directory)
    text_tokenizer = load_text_tokenizer(text_tokenizer_dir or directory)
    layout = TokenLayout.from_tokenizer(text_tokenizer, image_tokenizer.grid, image_tokenizer.codebook_size)
    if config.vocab_size < layout.vocab_size:
        raise ValueError(f"{directory}: Emu3 vocab_size {config.vocab_size} < {layout.vocab_size} needed by the image tokenizer's codebook")
    with torch.device("meta"):
        model = Emu3ForCausalLM(config)  # no memory: weights come from the checkpoint
    missing = set(model.state_dict()) - set(state)
    if "lm_head.weight" in missing and config.tie_word_embeddings:
        missing.discard("lm_head.weight")
    if missing:
        raise ValueError(f"{directory}: {len(missing)} text-model weights missing (e.g. {sorted(missing)[:3]}); the download is incomplete")
    model.load_state_dict({k: v.float() for k, v in state.items() if k in model.state_dict()}, assign=True, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    # rotary inverse frequencies are buffers (not in the checkpoint): rebuild them on CPU
    model.model.rotary_emb = type(model.model.rotary_emb)(config)
    return ModelBundle(model, text_tokenizer, layout, f"emu3:{directory}")


def _fresh(preset_name: str, image_tokenizer, texts: Sequence[str], seed: int, text_tokenizer_dir: str | None,
           bpe_vocab_size: int | None) -> ModelBundle:
    from transformers import Emu3ForCausalLM

    from progemu.model.text_tokenizer import load_text_tokenizer, train_text_tokenizer

    preset = get_preset(preset_name)
    if text_tokenizer_dir:
        text_tokenizer = load_text_tokenizer(text_tokenizer_dir)
    elif preset.text_tokenizer == "bpe":
        text_tokenizer = train_text_tokenizer(texts, image_tokenizer.codebook_size, vocab_size=bpe_vocab_size or preset.bpe_vocab_size)
    else:
        raise ValueError(f"preset {preset.name!r} uses Emu3's text tokenizer: pass --init EMU3_DIR or --text-tokenizer DIR")
    layout = TokenLayout.from_tokenizer(text_tokenizer, image_tokenizer.grid, image_tokenizer.codebook_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Emu3ForCausalLM(text_config(preset, layout))
    return ModelBundle(model, text_tokenizer, layout, f"preset:{preset.name}")


def build_model_bundle(*, image_tokenizer, preset: str, texts: Sequence[str], seed: int, resume_dir: str | Path | None = None,
                       init: str | Path | None = None, text_tokenizer_dir: str | None = None,
                       bpe_vocab_size: int | None = None) -> ModelBundle:
    """The model / tokenizer / layout for a run (see the module docstring for the precedence)."""
    if resume_dir is not None:
        return _from_progemu_checkpoint(Path(resume_dir), image_tokenizer, f"resume:{resume_dir}")
    if init is not None:
        init = Path(init)
        if not init.is_dir():
            raise FileNotFoundError(f"--init {init}: directory not found (expected a progemu checkpoint or Emu3 in Hugging Face format)")
        if is_checkpoint(init):
            return _from_progemu_checkpoint(init, image_tokenizer, f"init:{init}")
        config_path = init / "config.json"
        if config_path.is_file() and json.loads(config_path.read_text(encoding="utf-8")).get("model_type") in ("emu3", "emu3_text_model"):
            return _from_emu3(init, image_tokenizer, text_tokenizer_dir)
        raise ValueError(f"--init {init}: neither a progemu checkpoint (progemu.json) nor an Emu3 Hugging Face checkpoint "
                         "(config.json with model_type 'emu3'); download Emu3-community/Emu3-Gen-hf there")
    return _fresh(preset, image_tokenizer, texts, seed, text_tokenizer_dir, bpe_vocab_size)


def training_texts(pairs: Sequence[Any]) -> list[str]:
    """Prompts and interpretations of ``pairs`` in a fixed order (the BPE's training text)."""
    texts: list[str] = []
    for pair in sorted(pairs, key=lambda p: p.pair_id):
        texts += [pair.prompt, pair.interpretation]
    return texts
