"""Tiny checkpoints in BAAI's Emu3 format, and plain-PyTorch references that run them (no hub, no progemu).

What BAAI's remote code (baaivision/Emu3, the official ProgEmu code) writes, in miniature:

- a language-model folder: ``config.json`` with ``model_type "Emu3"`` and BAAI's special ids,
  weights under BAAI's key names (safetensors shards + index, or ``.bin`` shards + index), and the
  tokenizer files ``emu3.tiktoken`` (base64 token + rank per line, a small byte-level BPE trained
  here with Qwen's split pattern) and ``emu3_vision_tokens.txt``;
- a vision-tokenizer folder: ``config.json`` with ``model_type "Emu3VisionVQ"`` (BAAI's names
  ``ch``, ``ch_mult``, ``z_channels``) and weights under BAAI's key names, attention projections as
  1x1 convolutions ``[C, C, 1, 1]``.

The references (:func:`reference_logits`, :func:`reference_vq_encode`, :func:`reference_vq_decode`)
are functional re-statements of BAAI's forward passes written for these tests from the BAAI module
tree; they read the BAAI-named state dicts directly, so they share nothing with the converter or
with transformers.
"""
from __future__ import annotations

import base64
import collections
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIAL_START = 151643
FIXED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
IMAGE_SPECIALS = ["<|image token|>", "<|image start|>", "<|image end|>"]

TEXTS = [
    "New small left pleural effusion.", "Mild pleural effusion has developed in the left lower lung.",
    "There is blunting of the left costophrenic angle, which was previously sharp.",
    "The opacity in the right upper lobe is unchanged. Heart size is normal.",
    "Interval increase in bibasilar atelectasis, worse on the right.", "No new consolidation.",
    "Increased pulmonary edema; moderate cardiomegaly persists.",
]

# -------------------------------------------------------------------------------- text tokenizer
def train_ranks(texts: list[str], merges: int = 120) -> dict[bytes, int]:
    """A small byte-level BPE in tiktoken's sense: ranks 0..255 are the bytes, then ``merges`` merged tokens."""
    import regex

    ranks = {bytes([b]): b for b in range(256)}
    words = collections.Counter(tuple(bytes([b]) for b in piece.encode()) for text in texts
                                for piece in regex.findall(PAT_STR, text))
    for _ in range(merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[a, b] += count
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda item: (item[1], item[0]))
        ranks[a + b] = len(ranks)
        merged = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return ranks


def vision_token_lines(codebook_size: int) -> list[str]:
    return IMAGE_SPECIALS + [f"<|visual token {k:06d}|>" for k in range(codebook_size)]


def write_baai_tokenizer(directory: Path, codebook_size: int) -> dict[bytes, int]:
    directory.mkdir(parents=True, exist_ok=True)
    ranks = train_ranks(TEXTS * 2)
    with open(directory / "emu3.tiktoken", "wb") as handle:
        for token, rank in ranks.items():
            handle.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    (directory / "emu3_vision_tokens.txt").write_text("\n".join(vision_token_lines(codebook_size)) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_emu3.Emu3Tokenizer", None]}, "tokenizer_class": "Emu3Tokenizer",
        "bos_token": "<|extra_203|>", "eos_token": "<|extra_204|>", "pad_token": "<|endoftext|>"}), encoding="utf-8")
    return ranks


def tiktoken_reference(directory: Path):
    """BAAI's own encoder: a ``tiktoken.Encoding`` over the files, specials numbered from 151643 (as Emu3Tokenizer)."""
    import tiktoken

    ranks = {}
    for line in (directory / "emu3.tiktoken").read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    lines = [t.strip() for t in (directory / "emu3_vision_tokens.txt").read_text().splitlines() if t.strip()]
    specials = {name: SPECIAL_START + i for i, name in enumerate(FIXED + lines)}
    return tiktoken.Encoding("Emu3", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=specials), specials


# -------------------------------------------------------------------------------- language model
def visual_offset() -> int:
    return SPECIAL_START + len(FIXED) + len(IMAGE_SPECIALS)


def baai_lm_config(codebook_size: int, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2) -> dict:
    """A ``config.json`` as BAAI's Emu3Config writes it (model_type "Emu3"), vocabulary sized for the codebook."""
    return {
        "architectures": ["Emu3ForCausalLM"], "attention_dropout": 0.1,
        "auto_map": {"AutoConfig": "configuration_emu3.Emu3Config", "AutoModelForCausalLM": "modeling_emu3.Emu3ForCausalLM"},
        "boi_token_id": 151852, "bos_token_id": 151849, "eof_token_id": 151847, "eoi_token_id": 151853,
        "eol_token_id": 151846, "eos_token_id": 151850, "hidden_act": "silu", "hidden_size": hidden,
        "image_area": 518400, "img_token_id": 151851, "initializer_range": 0.02, "intermediate_size": 2 * hidden,
        "max_position_embeddings": 2048, "model_type": "Emu3", "num_attention_heads": heads, "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads, "pad_token_id": 151643, "pretraining_tp": 1, "rms_norm_eps": 1e-5,
        "rope_scaling": None, "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.44.0", "use_cache": True, "vocab_size": visual_offset() + codebook_size,
    }


def baai_lm_state(config: dict, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random weights under BAAI's key names; projections scaled so logits are peaky (no near-ties)."""
    g = torch.Generator().manual_seed(seed)
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head

    def rand(*shape, std=0.2):
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    state = {"model.embed_tokens.weight": rand(vocab, hidden, std=1.0)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        state.update({p + "self_attn.q_proj.weight": rand(hidden, hidden), p + "self_attn.k_proj.weight": rand(kv, hidden),
                      p + "self_attn.v_proj.weight": rand(kv, hidden), p + "self_attn.o_proj.weight": rand(hidden, hidden),
                      p + "mlp.gate_proj.weight": rand(inter, hidden), p + "mlp.up_proj.weight": rand(inter, hidden),
                      p + "mlp.down_proj.weight": rand(hidden, inter),
                      p + "input_layernorm.weight": (1 + rand(hidden, std=0.1).float()).to(dtype),
                      p + "post_attention_layernorm.weight": (1 + rand(hidden, std=0.1).float()).to(dtype)})
    state["model.norm.weight"] = (1 + rand(hidden, std=0.1).float()).to(dtype)
    state["lm_head.weight"] = rand(vocab, hidden, std=0.5)
    return state


def write_state(directory: Path, state: dict[str, torch.Tensor], kind: str = "safetensors", shards: int = 2) -> list[Path]:
    """Save ``state`` as HF tools do: one file, or ``shards`` files plus an index (safetensors or .bin)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    groups = [keys[i::shards] for i in range(shards)] if shards > 1 else [keys]
    ext, stem = (".safetensors", "model") if kind == "safetensors" else (".bin", "pytorch_model")
    names = [f"{stem}{ext}"] if shards == 1 else [f"{stem}-{i + 1:05d}-of-{shards:05d}{ext}" for i in range(shards)]
    for name, group in zip(names, groups):
        part = {k: state[k].contiguous() for k in group}
        if kind == "safetensors":
            save_file(part, str(directory / name), metadata={"format": "pt"})
        else:
            torch.save(part, directory / name)
    if shards > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": {k: name for name, group in zip(names, groups) for k in group}}
        (directory / f"{stem}{ext}.index.json").write_text(json.dumps(index), encoding="utf-8")
    return [directory / name for name in names]


def write_baai_model(directory: Path, codebook_size: int, *, kind: str = "safetensors", shards: int = 2, seed: int = 0,
                     dtype=torch.float32, tokenizer: bool = True, **shape) -> tuple[dict, dict]:
    """A BAAI-format language-model folder; returns ``(config, state)``."""
    config = baai_lm_config(codebook_size, **shape)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    state = baai_lm_state(config, seed=seed, dtype=dtype)
    write_state(directory, state, kind=kind, shards=shards)
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_k": 2048}), encoding="utf-8")
    if tokenizer:
        write_baai_tokenizer(directory, codebook_size)
    return config, state


def _rms(x, weight, eps):
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.no_grad()
def reference_logits(state: dict, config: dict, ids: torch.Tensor) -> torch.Tensor:
    """BAAI's Emu3 decoder, functional, eval mode: float32 ``[B, T, vocab]`` logits of ``ids [B, T]``."""
    s = {k: v.float() for k, v in state.items()}
    heads, kv_heads, hidden = config["num_attention_heads"], config["num_key_value_heads"], config["hidden_size"]
    dim, eps = hidden // heads, config["rms_norm_eps"]
    batch, length = ids.shape
    inv_freq = 1.0 / (config["rope_theta"] ** (torch.arange(0, dim, 2).float() / dim))
    freqs = torch.outer(torch.arange(length).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    mask = torch.full((length, length), float("-inf")).triu(1)
    x = s["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, s[p + "input_layernorm.weight"], eps)
        q = (h @ s[p + "self_attn.q_proj.weight"].T).view(batch, length, heads, dim).transpose(1, 2)
        k = (h @ s[p + "self_attn.k_proj.weight"].T).view(batch, length, kv_heads, dim).transpose(1, 2)
        v = (h @ s[p + "self_attn.v_proj.weight"].T).view(batch, length, kv_heads, dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
        weights = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(dim) + mask, dim=-1)
        attn = (weights @ v).transpose(1, 2).reshape(batch, length, hidden)
        x = x + attn @ s[p + "self_attn.o_proj.weight"].T
        h = _rms(x, s[p + "post_attention_layernorm.weight"], eps)
        x = x + (F.silu(h @ s[p + "mlp.gate_proj.weight"].T) * (h @ s[p + "mlp.up_proj.weight"].T)) @ s[p + "mlp.down_proj.weight"].T
    return _rms(x, s["model.norm.weight"], eps) @ s["lm_head.weight"].T


@torch.no_grad()
def reference_greedy(state: dict, config: dict, ids: list[int], steps: int) -> list[int]:
    """``steps`` greedy tokens by full re-computation (no cache)."""
    out = list(ids)
    for _ in range(steps):
        out.append(int(reference_logits(state, config, torch.tensor([out]))[0, -1].argmax()))
    return out[len(ids):]


# -------------------------------------------------------------------------------- vision tokenizer
def baai_vq_config(codebook_size: int = 64) -> dict:
    """BAAI's Emu3VisionVQ config.json in miniature: 16 px -> 4x4 codes, attention at level 1, 4 frames."""
    return {"architectures": ["Emu3VisionVQModel"], "attn_resolutions": [1], "ch": 32, "ch_mult": [1, 2, 2],
            "codebook_size": codebook_size, "double_z": False, "dropout": 0.0, "embed_dim": 4, "in_channels": 3,
            "model_type": "Emu3VisionVQ", "num_res_blocks": 1, "out_channels": 3, "temporal_downsample_factor": 4,
            "z_channels": 4, "torch_dtype": "float32", "transformers_version": "4.44.0"}


def _resnet(prefix: str, cin: int, cout: int, zq: int | None) -> dict[str, tuple]:
    shapes = {}
    for norm, ch in (("norm1", cin), ("norm2", cout)):
        shapes.update(_norm(f"{prefix}{norm}.", ch, zq))
    shapes.update({prefix + "conv1.weight": (cout, cin, 3, 3), prefix + "conv1.bias": (cout,),
                   prefix + "conv2.weight": (cout, cout, 3, 3), prefix + "conv2.bias": (cout,)})
    if cin != cout:
        shapes.update({prefix + "nin_shortcut.weight": (cout, cin, 1, 1), prefix + "nin_shortcut.bias": (cout,)})
    return shapes


def _norm(prefix: str, ch: int, zq: int | None) -> dict[str, tuple]:
    if zq is None:
        return {prefix + "weight": (ch,), prefix + "bias": (ch,)}
    return {prefix + "norm_layer.weight": (ch,), prefix + "norm_layer.bias": (ch,), prefix + "conv_y.weight": (ch, zq, 1, 1),
            prefix + "conv_y.bias": (ch,), prefix + "conv_b.weight": (ch, zq, 1, 1), prefix + "conv_b.bias": (ch,)}


def _attn(prefix: str, ch: int, zq: int | None) -> dict[str, tuple]:
    shapes = _norm(prefix + "norm.", ch, zq)
    for name in ("q", "k", "v", "proj_out"):
        shapes.update({f"{prefix}{name}.weight": (ch, ch, 1, 1), f"{prefix}{name}.bias": (ch,)})
    return shapes


def _temporal(prefix: str, ch: int) -> dict[str, tuple]:
    shapes = {}
    for norm in ("norm1", "norm2"):
        shapes.update({f"{prefix}{norm}.weight": (ch,), f"{prefix}{norm}.bias": (ch,), f"{prefix}{norm}.running_mean": (ch,),
                       f"{prefix}{norm}.running_var": (ch,), f"{prefix}{norm}.num_batches_tracked": ()})
    for conv in ("conv1", "conv2"):
        shapes.update({f"{prefix}{conv}.conv.weight": (ch, ch, 3, 3, 3), f"{prefix}{conv}.conv.bias": (ch,)})
    return shapes


def baai_vq_shapes(c: dict) -> dict[str, tuple]:
    """Every parameter / buffer of BAAI's Emu3VisionVQModel for config ``c``, by BAAI name."""
    ch, mult, nrb, zc, ed = c["ch"], c["ch_mult"], c["num_res_blocks"], c["z_channels"], c["embed_dim"]
    zout = 2 * zc if c["double_z"] else zc
    steps = int(math.log2(c["temporal_downsample_factor"]))
    s = {"encoder.conv_in.weight": (ch, c["in_channels"], 3, 3), "encoder.conv_in.bias": (ch,)}
    block_in = ch
    for i, m in enumerate(mult):
        for j in range(nrb):
            s.update(_resnet(f"encoder.down.{i}.block.{j}.", block_in, ch * m, None))
            block_in = ch * m
            if i in c["attn_resolutions"]:
                s.update(_attn(f"encoder.down.{i}.attn.{j}.", block_in, None))
        if i != len(mult) - 1:
            s.update({f"encoder.down.{i}.downsample.conv.weight": (block_in, block_in, 3, 3),
                      f"encoder.down.{i}.downsample.conv.bias": (block_in,)})
    s.update(_resnet("encoder.mid.block_1.", block_in, block_in, None))
    s.update(_attn("encoder.mid.attn_1.", block_in, None))
    s.update(_resnet("encoder.mid.block_2.", block_in, block_in, None))
    s.update({"encoder.norm_out.weight": (block_in,), "encoder.norm_out.bias": (block_in,),
              "encoder.conv_out.weight": (zout, block_in, 3, 3), "encoder.conv_out.bias": (zout,)})
    for k in range(steps):
        s.update({f"encoder.time_conv.{k}.conv.conv.weight": (zout, zout, 4, 3, 3), f"encoder.time_conv.{k}.conv.conv.bias": (zout,)})
    for k in range(nrb):
        s.update(_temporal(f"encoder.time_res_stack.{k}.", zout))
    for k in range(nrb):
        s.update(_temporal(f"decoder.time_res_stack.{k}.", zc))
    for k in range(steps):
        s.update({f"decoder.time_conv.{k}.conv.conv.weight": (zc, zc, 3, 3, 3), f"decoder.time_conv.{k}.conv.conv.bias": (zc,)})
    block_in = ch * mult[-1]
    s.update({"decoder.conv_in.weight": (block_in, zc, 3, 3), "decoder.conv_in.bias": (block_in,)})
    s.update(_resnet("decoder.mid.block_1.", block_in, block_in, ed))
    s.update(_attn("decoder.mid.attn_1.", block_in, ed))
    s.update(_resnet("decoder.mid.block_2.", block_in, block_in, ed))
    for i in reversed(range(len(mult))):
        for j in range(nrb + 1):
            s.update(_resnet(f"decoder.up.{i}.block.{j}.", block_in, ch * mult[i], ed))
            block_in = ch * mult[i]
            if i in c["attn_resolutions"]:
                s.update(_attn(f"decoder.up.{i}.attn.{j}.", block_in, ed))
        if i != 0:
            s.update({f"decoder.up.{i}.upsample.conv.weight": (block_in, block_in, 3, 3),
                      f"decoder.up.{i}.upsample.conv.bias": (block_in,)})
    s.update(_norm("decoder.norm_out.", block_in, ed))
    s.update({"decoder.conv_out.weight": (c["out_channels"], block_in, 3, 3), "decoder.conv_out.bias": (c["out_channels"],),
              "quantize.embedding.weight": (c["codebook_size"], ed),
              "quant_conv.conv.weight": (ed, zc, 3, 1, 1), "quant_conv.conv.bias": (ed,),
              "post_quant_conv.conv.weight": (zc, ed, 3, 1, 1), "post_quant_conv.conv.bias": (zc,)})
    return s


def baai_vq_state(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random BAAI-named VQ weights: fan-in scaled convolutions, norms near 1, positive running variances."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in baai_vq_shapes(c).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith("running_mean") or name.endswith("bias"):
            state[name] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            state[name] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name == "quantize.embedding.weight":
            state[name] = torch.randn(shape, generator=g)
        else:
            state[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return state


def spread_codebook(state: dict, c: dict, seed: int = 0) -> None:
    """Codebook entries drawn from the encoder's own latents of random images, so codes vary across a grid."""
    g = torch.Generator().manual_seed(seed)
    latents = reference_vq_latents(state, c, torch.rand(8, c["in_channels"], 16, 16, generator=g) * 2 - 1)
    pool = latents.permute(0, 2, 3, 4, 1).reshape(-1, latents.shape[1])
    pick = torch.randint(0, pool.shape[0], (c["codebook_size"],), generator=g)
    state["quantize.embedding.weight"] = pool[pick] + 0.01 * torch.randn(c["codebook_size"], pool.shape[1], generator=g)


def write_baai_vq(directory: Path, codebook_size: int = 64, seed: int = 0) -> tuple[dict, dict]:
    config = baai_vq_config(codebook_size)
    state = baai_vq_state(config, seed)
    spread_codebook(state, config, seed)
    write_state(directory, state, shards=1)
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                                                    "spatial_factor": 8}), encoding="utf-8")
    return config, state


def _causal_conv(x, s, prefix, stride=(1, 1, 1)):
    weight = s[prefix + "weight"]
    kernel = weight.shape[2:]
    pads = []
    for k, st in reversed(list(zip(kernel[1:], stride[1:]))):
        p = k - st
        pads += [p // 2 + p % 2, p // 2]
    return F.conv3d(F.pad(x, pads + [2, 0]), weight, s[prefix + "bias"], stride=stride)


def _group_norm(x, s, prefix):
    return F.group_norm(x, 32, s[prefix + "weight"], s[prefix + "bias"], eps=1e-6)


def _norm_fwd(x, s, prefix, zq):
    if zq is None:
        return _group_norm(x, s, prefix)
    zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
    x = _group_norm(x, s, prefix + "norm_layer.")
    return x * F.conv2d(zq, s[prefix + "conv_y.weight"], s[prefix + "conv_y.bias"]) + \
        F.conv2d(zq, s[prefix + "conv_b.weight"], s[prefix + "conv_b.bias"])


def _resnet_fwd(x, s, p, zq=None):
    h = F.silu(_norm_fwd(x, s, p + "norm1.", zq))
    h = F.conv2d(h, s[p + "conv1.weight"], s[p + "conv1.bias"], padding=1)
    h = F.silu(_norm_fwd(h, s, p + "norm2.", zq))
    h = F.conv2d(h, s[p + "conv2.weight"], s[p + "conv2.bias"], padding=1)
    if p + "nin_shortcut.weight" in s:
        x = F.conv2d(x, s[p + "nin_shortcut.weight"], s[p + "nin_shortcut.bias"])
    return x + h


def _attn_fwd(x, s, p, zq=None):
    nx = _norm_fwd(x, s, p + "norm.", zq)
    q, k, v = (F.conv2d(nx, s[f"{p}{n}.weight"], s[f"{p}{n}.bias"]) for n in ("q", "k", "v"))
    b, c, h, w = q.shape
    score = torch.softmax(torch.bmm(q.reshape(b, c, h * w).permute(0, 2, 1), k.reshape(b, c, h * w)) / c**0.5, dim=2)
    out = torch.bmm(v.reshape(b, c, h * w), score.permute(0, 2, 1)).reshape(b, c, h, w)
    return x + F.conv2d(out, s[p + "proj_out.weight"], s[p + "proj_out.bias"])


def _temporal_fwd(x, s, p):
    def bn(t, n):
        return F.batch_norm(t, s[n + "running_mean"], s[n + "running_var"], s[n + "weight"], s[n + "bias"], False, 0.0, 1e-5)

    h = _causal_conv(F.silu(bn(x, p + "norm1.")), s, p + "conv1.conv.")
    h = _causal_conv(F.silu(bn(h, p + "norm2.")), s, p + "conv2.conv.")
    return x + h


@torch.no_grad()
def reference_vq_encode(state: dict, c: dict, pixels: torch.Tensor) -> torch.Tensor:
    """BAAI's Emu3VisionVQModel.encode: ``[B, C, H, W]`` in [-1, 1] -> int64 codes ``[B, h, w]``."""
    h = reference_vq_latents(state, c, pixels)  # [B, e, T', h, w]
    x = h.permute(0, 2, 3, 4, 1).reshape(-1, h.shape[1])
    codebook = state["quantize.embedding.weight"]
    distance = (x**2).sum(1, keepdim=True) + (codebook**2).sum(1) - 2 * x @ codebook.T
    return distance.argmin(1).view(h.shape[0], h.shape[2], h.shape[3], h.shape[4])[:, 0]


@torch.no_grad()
def reference_vq_latents(state: dict, c: dict, pixels: torch.Tensor) -> torch.Tensor:
    """BAAI's encoder + quant_conv: ``[B, C, H, W]`` in [-1, 1] -> ``[B, embed_dim, T', h, w]``."""
    s, mult, nrb, t = state, c["ch_mult"], c["num_res_blocks"], c["temporal_downsample_factor"]
    b = pixels.shape[0]
    h = F.conv2d(pixels.unsqueeze(1).repeat(1, t, 1, 1, 1).flatten(0, 1), s["encoder.conv_in.weight"],
                 s["encoder.conv_in.bias"], padding=1)
    for i in range(len(mult)):
        for j in range(nrb):
            h = _resnet_fwd(h, s, f"encoder.down.{i}.block.{j}.")
            if i in c["attn_resolutions"]:
                h = _attn_fwd(h, s, f"encoder.down.{i}.attn.{j}.")
        if i != len(mult) - 1:
            h = F.conv2d(F.pad(h, (0, 1, 0, 1)), s[f"encoder.down.{i}.downsample.conv.weight"],
                         s[f"encoder.down.{i}.downsample.conv.bias"], stride=2)
    h = _resnet_fwd(_attn_fwd(_resnet_fwd(h, s, "encoder.mid.block_1."), s, "encoder.mid.attn_1."), s, "encoder.mid.block_2.")
    h = F.conv2d(F.silu(_group_norm(h, s, "encoder.norm_out.")), s["encoder.conv_out.weight"], s["encoder.conv_out.bias"], padding=1)
    h = h.reshape(b, t, *h.shape[1:]).permute(0, 2, 1, 3, 4)  # [B, z, T, h, w]
    for k in range(int(math.log2(t))):
        h = F.silu(_causal_conv(h, s, f"encoder.time_conv.{k}.conv.conv.", stride=(2, 1, 1)))
    for k in range(nrb):
        h = _temporal_fwd(h, s, f"encoder.time_res_stack.{k}.")
    return _causal_conv(h, s, "quant_conv.conv.")


@torch.no_grad()
def reference_vq_decode(state: dict, c: dict, codes: torch.Tensor) -> torch.Tensor:
    """BAAI's Emu3VisionVQModel.decode: codes ``[B, h, w]`` -> ``[B, out_channels, 4h, 4w]`` (first frame)."""
    s, mult, nrb, t = state, c["ch_mult"], c["num_res_blocks"], c["temporal_downsample_factor"]
    b, hh, ww = codes.shape
    quant = s["quantize.embedding.weight"][codes.flatten()].view(b, 1, hh, ww, -1).permute(0, 4, 1, 2, 3)  # [B, e, 1, h, w]
    quant2 = _causal_conv(quant, s, "post_quant_conv.conv.")
    z = torch.cat((quant2, quant), dim=0)  # [2B, c, 1, h, w]
    for k in range(nrb):
        z = _temporal_fwd(z, s, f"decoder.time_res_stack.{k}.")
    for k in range(int(math.log2(t))):
        n, ch, tt, h_, w_ = z.shape
        z = F.interpolate(z.permute(0, 1, 3, 4, 2).reshape(n, -1, tt), scale_factor=2.0, mode="nearest")
        z = z.view(n, ch, h_, w_, -1).permute(0, 1, 4, 2, 3).contiguous()
        z = F.silu(_causal_conv(z, s, f"decoder.time_conv.{k}.conv.conv."))
    h, zq = torch.chunk(z.permute(0, 2, 1, 3, 4), 2, dim=0)
    h, zq = h.flatten(0, 1), zq.flatten(0, 1)
    h = F.conv2d(h, s["decoder.conv_in.weight"], s["decoder.conv_in.bias"], padding=1)
    h = _resnet_fwd(h, s, "decoder.mid.block_1.", zq)
    h = _attn_fwd(h, s, "decoder.mid.attn_1.", zq)
    h = _resnet_fwd(h, s, "decoder.mid.block_2.", zq)
    for i in reversed(range(len(mult))):
        for j in range(nrb + 1):
            h = _resnet_fwd(h, s, f"decoder.up.{i}.block.{j}.", zq)
            if i in c["attn_resolutions"]:
                h = _attn_fwd(h, s, f"decoder.up.{i}.attn.{j}.", zq)
        if i != 0:
            h = F.conv2d(F.interpolate(h, scale_factor=2.0, mode="nearest"), s[f"decoder.up.{i}.upsample.conv.weight"],
                         s[f"decoder.up.{i}.upsample.conv.bias"], padding=1)
    h = F.conv2d(F.silu(_norm_fwd(h, s, "decoder.norm_out.", zq)), s["decoder.conv_out.weight"], s["decoder.conv_out.bias"], padding=1)
    factor = 2 ** (len(mult) - 1)
    return h.reshape(b, t, c["out_channels"], hh * factor, ww * factor)[:, 0]
