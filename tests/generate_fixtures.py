"""Small models and layouts for the generation tests (no weights from a hub).

A tiny random ``transformers.Emu3ForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 KV heads,
attention dropout 0) over a compact vocabulary laid out like Emu3's: text ids, then the eight
specials, then the visual ids.
"""
from __future__ import annotations

import torch

from progemu.model.layout import TokenLayout

N_TEXT = 40  # regular text ids 0..39


def tiny_layout(grid: tuple[int, int] = (4, 4), codebook_size: int = 32) -> TokenLayout:
    specials = dict(pad_id=40, eol_id=41, eof_id=42, bos_id=43, eos_id=44, image_token_id=45, boi_id=46, eoi_id=47)
    return TokenLayout(grid_h=grid[0], grid_w=grid[1], codebook_size=codebook_size, visual_offset=48,
                       size_text_ids=(5, 6, 7), text_vocab_size=48, **specials)


def tiny_model(layout: TokenLayout, seed: int = 0, init_range: float = 0.2, layers: int = 2, hidden: int = 64,
               eos_boost: float | None = None):
    """A random Emu3ForCausalLM covering ``layout``; ``init_range`` > default makes logits peaky (no near-ties)."""
    from transformers import Emu3ForCausalLM, Emu3TextConfig

    torch.manual_seed(seed)
    config = Emu3TextConfig(vocab_size=layout.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=4096, attention_dropout=0.0, initializer_range=init_range,
                            pad_token_id=layout.pad_id, bos_token_id=layout.bos_id, eos_token_id=layout.eos_id,
                            tie_word_embeddings=False)
    model = Emu3ForCausalLM(config).eval()
    if eos_boost is not None:
        with torch.no_grad():  # scale EOS's output row: > 1 makes rows finish at different steps, 0 makes EOS rare
            model.lm_head.weight[layout.eos_id] *= eos_boost
    return model


def prior_codes(layout: TokenLayout, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, layout.codebook_size, layout.grid, generator=generator)


def tiny_prefix(layout: TokenLayout, seed: int, prompt_length: int = 5) -> list[int]:
    generator = torch.Generator().manual_seed(1000 + seed)
    prompt = torch.randint(0, N_TEXT, (prompt_length,), generator=generator).tolist()
    return layout.prefix(prior_codes(layout, seed), prompt)


TEXTS = [
    "New small left pleural effusion.", "Mild pleural effusion has developed in the left lower lung.",
    "There is blunting of the left costophrenic angle, which was previously sharp.",
    "The opacity in the right upper lobe is unchanged. Heart size is normal.",
    "Interval increase in bibasilar atelectasis, worse on the right.", "No new consolidation.",
]


def tiny_image_tokenizer(seed: int = 0, image_size: int = 32, codebook_size: int = 64):
    """A random Emu3VQVAE image tokenizer, 32 px -> 4x4 codes."""
    from progemu.tokenizer import ImageTokenizer, TokenizerConfig

    config = TokenizerConfig(name="test", image_size=image_size, codebook_size=codebook_size, embed_dim=4,
                             base_channels=32, channel_multiplier=(1, 1, 2, 2))
    return ImageTokenizer.from_config(config, seed=seed)


def tiny_checkpoint(directory, mode: str = "joint", seed: int = 0, image_tokenizer=None):
    """A checkpoint saved by progemu's own code (save_checkpoint): tiny random model + tokenizers."""
    from progemu.model.checkpoint import save_checkpoint
    from progemu.model.text_tokenizer import train_text_tokenizer

    image_tokenizer = image_tokenizer or tiny_image_tokenizer()
    text_tokenizer = train_text_tokenizer(TEXTS * 3, codebook_size=image_tokenizer.codebook_size, vocab_size=300)
    layout = TokenLayout.from_tokenizer(text_tokenizer, image_tokenizer.grid, image_tokenizer.codebook_size)
    model = tiny_model(layout, seed=seed, init_range=0.1, eos_boost=2.0)
    return save_checkpoint(directory, model, text_tokenizer, layout, mode=mode, image_tokenizer=image_tokenizer, preset="test")


def write_prior_png(path, size: int = 40, seed: int = 0):
    """A small synthetic greyscale prior PNG (non-square sizes allowed via a tuple)."""
    import numpy as np
    from PIL import Image

    shape = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    image = (np.clip(rng.normal(0.5, 0.2, shape), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(image).save(path)
    return path
