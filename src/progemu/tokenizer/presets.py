"""Named image-tokenizer configurations (all of them the Emu3 VQ-VAE architecture).

A :class:`TokenizerConfig` holds every architectural setting of transformers'
``Emu3VQVAEConfig`` plus the native image size. Presets:

==========  =====  ==========  =====  ========  =======  =============================================
name        px     downsample  grid   codebook  params   for
==========  =====  ==========  =====  ========  =======  =============================================
``demo``    128    8x          16x16  512       1.0 M    the embedded demo; trains on 2 CPU cores
``small256``256    8x          32x32  2048      4.1 M    CPU / small GPU experiments
``gpu512``  512    8x          64x64  8192      68 M     a domain tokenizer trained on one GPU
``emu3``    512    8x          64x64  32768     271 M    the released Emu3 vision tokenizer (loading)
==========  =====  ==========  =====  ========  =======  =============================================

Constraints of the architecture (transformers ``modeling_emu3``): GroupNorm uses 32
groups, so ``base_channels`` must be a multiple of 32; the middle attention block
works on ``hidden_size == base_channels * channel_multiplier[-1]`` channels; the
spatial downsampling factor is ``2 ** (len(channel_multiplier) - 1)``; the decoder
concatenates latents and quantised codes along the batch axis, so
``latent_channels == embed_dim``. Our own presets use ``temporal_downsample_factor=1``:
Emu3 is a video tokenizer that repeats a still image 4 times along time and
compresses it back to one temporal code; with factor 1 an image is one frame, which
costs a quarter of the compute and gives the same ``[B, h, w]`` codes.
"""
from __future__ import annotations

import dataclasses
import math

__all__ = ["TokenizerConfig", "PRESETS", "get_preset"]


@dataclasses.dataclass
class TokenizerConfig:
    """Architecture of one image tokenizer (an ``Emu3VQVAEConfig`` plus the native image size)."""

    name: str = "demo"
    image_size: int = 128  # native square size in px; encode() accepts any multiple of `downsample`
    codebook_size: int = 512
    embed_dim: int = 4  # dimension of a codebook vector (== latent_channels)
    in_channels: int = 1  # 1 = greyscale native; 3 = RGB (grey is repeated, as for Emu3)
    out_channels: int = 1
    temporal_downsample_factor: int = 1  # Emu3: 4 (video); 1 = one frame per image
    base_channels: int = 32
    channel_multiplier: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    num_attention_heads: int = 1

    @property
    def downsample(self) -> int:
        """Spatial factor between pixels and codes (8 -> one code per 8x8 px patch)."""
        return 2 ** (len(self.channel_multiplier) - 1)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the code grid at the native image size."""
        side = self.image_size // self.downsample
        return (side, side)

    @property
    def hidden_size(self) -> int:
        return self.base_channels * self.channel_multiplier[-1]

    def validate(self) -> "TokenizerConfig":
        """Raise ``ValueError`` naming the setting that the Emu3 VQ-VAE cannot build."""
        if self.base_channels <= 0 or self.base_channels % 32:
            raise ValueError(f"tokenizer {self.name!r}: base_channels={self.base_channels} must be a positive multiple of 32 (GroupNorm uses 32 groups)")
        if not self.channel_multiplier or any(int(m) <= 0 for m in self.channel_multiplier):
            raise ValueError(f"tokenizer {self.name!r}: channel_multiplier={self.channel_multiplier} must be positive integers")
        if self.image_size % self.downsample:
            raise ValueError(f"tokenizer {self.name!r}: image_size={self.image_size} must be a multiple of the downsampling factor {self.downsample}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"tokenizer {self.name!r}: hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        factor = self.temporal_downsample_factor
        if factor < 1 or 2 ** int(math.log2(factor)) != factor:
            raise ValueError(f"tokenizer {self.name!r}: temporal_downsample_factor={factor} must be a power of two (1 for images)")
        if self.in_channels not in (1, 3) or self.out_channels not in (1, 3):
            raise ValueError(f"tokenizer {self.name!r}: in/out channels must be 1 (grey) or 3 (RGB), got {self.in_channels}/{self.out_channels}")
        if self.codebook_size < 2 or self.embed_dim < 1:
            raise ValueError(f"tokenizer {self.name!r}: codebook_size={self.codebook_size} / embed_dim={self.embed_dim} too small")
        return self

    def vq_config(self):
        """The matching ``transformers.Emu3VQVAEConfig``."""
        from transformers import Emu3VQVAEConfig

        self.validate()
        return Emu3VQVAEConfig(
            codebook_size=int(self.codebook_size),
            embed_dim=int(self.embed_dim),
            latent_channels=int(self.embed_dim),
            double_latent=False,
            in_channels=int(self.in_channels),
            out_channels=int(self.out_channels),
            temporal_downsample_factor=int(self.temporal_downsample_factor),
            base_channels=int(self.base_channels),
            channel_multiplier=[int(m) for m in self.channel_multiplier],
            num_res_blocks=int(self.num_res_blocks),
            attn_resolutions=[int(a) for a in self.attn_resolutions],
            hidden_size=int(self.hidden_size),
            num_attention_heads=int(self.num_attention_heads),
            attention_dropout=0.0,
        )

    @classmethod
    def from_vq_config(cls, vq, image_size: int, name: str = "custom") -> "TokenizerConfig":
        """Read the architecture back from an ``Emu3VQVAEConfig`` (e.g. a pretrained ``config.json``)."""
        if int(vq.latent_channels) != int(vq.embed_dim):
            raise ValueError(f"tokenizer {name!r}: latent_channels={vq.latent_channels} != embed_dim={vq.embed_dim}; Emu3VQVAE's decoder needs them equal")
        if int(vq.hidden_size) != int(vq.base_channels) * int(list(vq.channel_multiplier)[-1]):
            raise ValueError(f"tokenizer {name!r}: hidden_size={vq.hidden_size} != base_channels * channel_multiplier[-1]")
        return cls(
            name=name,
            image_size=int(image_size),
            codebook_size=int(vq.codebook_size),
            embed_dim=int(vq.embed_dim),
            in_channels=int(vq.in_channels),
            out_channels=int(vq.out_channels),
            temporal_downsample_factor=int(vq.temporal_downsample_factor),
            base_channels=int(vq.base_channels),
            channel_multiplier=tuple(int(m) for m in vq.channel_multiplier),
            num_res_blocks=int(vq.num_res_blocks),
            attn_resolutions=tuple(int(a) for a in vq.attn_resolutions),
            num_attention_heads=int(vq.num_attention_heads),
        ).validate()


PRESETS: dict[str, TokenizerConfig] = {
    # 1.0 M parameters: 128 px -> 16x16 codes; sized to train in ~15 min on 2 idle CPU cores.
    "demo": TokenizerConfig(name="demo", image_size=128, codebook_size=512, base_channels=32,
                            channel_multiplier=(1, 1, 2, 2), num_res_blocks=1),
    "small256": TokenizerConfig(name="small256", image_size=256, codebook_size=2048, base_channels=64,
                                channel_multiplier=(1, 1, 2, 2), num_res_blocks=1),
    "gpu512": TokenizerConfig(name="gpu512", image_size=512, codebook_size=8192, embed_dim=4, base_channels=128,
                              channel_multiplier=(1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(3,)),
    # The released Emu3 vision tokenizer (BAAI/Emu3-VisionTokenizer, Emu3-*-hf `vq_config`).
    "emu3": TokenizerConfig(name="emu3", image_size=512, codebook_size=32768, embed_dim=4, in_channels=3,
                            out_channels=3, temporal_downsample_factor=4, base_channels=256,
                            channel_multiplier=(1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(3,)),
}


def get_preset(name: str) -> TokenizerConfig:
    """A fresh copy of a named preset; ``ValueError`` listing the names for an unknown one."""
    if name not in PRESETS:
        raise ValueError(f"unknown tokenizer preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
