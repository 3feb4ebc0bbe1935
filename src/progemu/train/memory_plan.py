"""Dry-run GPU memory plan for training a preset: parameters, gradients, optimiser state, activations.

Nothing is allocated: the parameter count comes from an ``Emu3ForCausalLM`` built on the
``meta`` device (exact, including embeddings and lm-head), the rest from formulas.

Per-GPU bytes (P parameters, W processes, fully sharded = FSDP / ZeRO-3, unsharded = DDP):

* parameters: fp32 master weights, ``4P/W`` (sharded) or ``4P``; plus, when sharded, the
  all-gathered working copy of the layers in flight (current + prefetched: 2 layers, compute dtype);
* gradients: fp32, ``4P/W`` or ``4P``;
* AdamW state: ``exp_avg`` + ``exp_avg_sq`` in fp32, ``8P/W`` or ``8P``;
* activations (compute dtype, ``b`` = 2 bytes for bf16) for a micro-batch of ``B`` sequences of ``T`` tokens:
  with gradient checkpointing the input of every decoder layer is kept (``L * B*T*h*b``) plus one
  layer's recomputed internals; without it every layer's internals. A layer's internals are
  estimated as the tensors autograd saves in a Llama block with SDPA / flash attention (no
  ``T^2`` term): ``B*T*(6h + 2*kv + 4*I)*b`` (norm inputs, q/k/v, attention output, residuals,
  gate / up / activation / product of the SwiGLU MLP);
* logits: only labelled positions go through the lm-head (``objective.TargetLoss``):
  ``N_target * V * (b + 4 + 4)`` (compute-dtype logits, their fp32 copy and its gradient);
* a fixed CUDA context / allocator reserve (``overhead_gib``, default 3 GiB).

These are planning numbers (within ~10-20 % of measured peaks for Llama-style models); the
command prints them for the 8B Emu3-Gen shape on 4 x 80 GB.
"""
from __future__ import annotations

import dataclasses

__all__ = ["MemoryPlan", "memory_plan", "count_parameters", "format_plan"]

GIB = 1024 ** 3


@dataclasses.dataclass
class MemoryPlan:
    preset: str
    parameters: int
    world_size: int
    strategy: str
    micro_batch: int
    seq_len: int
    target_tokens: int
    gradient_checkpointing: bool
    params_gib: float
    gathered_params_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float
    total_gib: float
    gpu_gib: float

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.gpu_gib


def count_parameters(config) -> int:
    """Exact parameter count of ``Emu3ForCausalLM(config)`` without allocating (meta device)."""
    import torch
    from transformers import Emu3ForCausalLM

    with torch.device("meta"):
        model = Emu3ForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def memory_plan(preset: str = "emu3-8b", *, world_size: int = 4, strategy: str = "fsdp", micro_batch: int = 1,
                seq_len: int | None = None, target_tokens: int | None = None, gradient_checkpointing: bool = True,
                compute_bytes: int = 2, gpu_gib: float = 80.0 * 1e9 / GIB, overhead_gib: float = 3.0,
                grid: int = 64, text_tokens: int = 200, vocab_size: int | None = None) -> MemoryPlan:
    """Per-GPU memory (GiB) to train ``preset`` on ``world_size`` GPUs (see the module docstring).

    Defaults: Emu3's 64x64 code grid, so a joint sequence is ``2 * 4169 + ~200`` text tokens
    (``seq_len``) and its target part ``4169 + ~100`` (``target_tokens``); micro-batch 1 as in
    the official recipe; ``strategy`` ``fsdp`` (= ZeRO-3) or ``ddp``. ``gpu_gib`` is 80 GB in GiB.
    """
    from progemu.model.presets import get_preset, text_config

    spec = get_preset(preset)
    vocab = int(vocab_size or spec.vocab_size or 184622)
    config = text_config(spec, vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    image = 1 + len(f"{grid}*{grid}") + 1 + grid * (grid + 1) + 2
    seq_len = int(seq_len or (1 + 2 * image + text_tokens))
    target_tokens = int(target_tokens or (image + text_tokens // 2))
    parameters = count_parameters(config)
    sharded = strategy == "fsdp" and world_size > 1
    shard = world_size if sharded else 1
    h, kv, inter, layers = config.hidden_size, config.num_key_value_heads * (config.hidden_size // config.num_attention_heads), \
        config.intermediate_size, config.num_hidden_layers
    per_layer_params = 4 * h * h + 2 * h * kv + 3 * h * inter  # q, o (h*h each) + k, v + MLP (approximately)
    params = 4 * parameters / shard
    gathered = (2 * per_layer_params * compute_bytes) if sharded else 0.0
    grads = 4 * parameters / shard
    optimizer = 8 * parameters / shard
    tokens = micro_batch * seq_len
    internals = tokens * (6 * h + 2 * kv + 4 * inter) * compute_bytes
    if gradient_checkpointing:
        activations = layers * tokens * h * compute_bytes + internals
    else:
        activations = layers * internals
    logits = micro_batch * target_tokens * vocab * (compute_bytes + 4 + 4)
    total = (params + gathered + grads + optimizer + activations + logits) / GIB + overhead_gib
    return MemoryPlan(preset=spec.name, parameters=parameters, world_size=world_size, strategy=strategy if sharded else "ddp",
                      micro_batch=micro_batch, seq_len=seq_len, target_tokens=target_tokens,
                      gradient_checkpointing=gradient_checkpointing, params_gib=params / GIB, gathered_params_gib=gathered / GIB,
                      grads_gib=grads / GIB, optimizer_gib=optimizer / GIB, activations_gib=activations / GIB,
                      logits_gib=logits / GIB, overhead_gib=overhead_gib, total_gib=total, gpu_gib=gpu_gib)


def format_plan(plan: MemoryPlan) -> str:
    """A Markdown table of one plan."""
    rows = [("parameters (fp32 master, per GPU)", plan.params_gib), ("gathered layers in flight", plan.gathered_params_gib),
            ("gradients (fp32)", plan.grads_gib), ("AdamW state (fp32 m + v)", plan.optimizer_gib),
            ("activations", plan.activations_gib), ("target logits + CE", plan.logits_gib), ("CUDA context / reserve", plan.overhead_gib),
            ("**total per GPU**", plan.total_gib)]
    head = (f"{plan.preset}: {plan.parameters / 1e9:.3f} B parameters, {plan.strategy} on {plan.world_size} GPUs, micro-batch "
            f"{plan.micro_batch} x {plan.seq_len} tokens ({plan.target_tokens} target), gradient checkpointing "
            f"{'on' if plan.gradient_checkpointing else 'off'}")
    lines = [head, "", "| item | GiB per GPU |", "| --- | ---: |"]
    lines += [f"| {name} | {value:.1f} |" for name, value in rows]
    lines.append(f"\nfits in {plan.gpu_gib:.1f} GiB: {'yes' if plan.fits else 'NO'}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m progemu.train.memory_plan
    for strategy, world in (("fsdp", 4), ("ddp", 4)):
        print(format_plan(memory_plan("emu3-8b", world_size=world, strategy=strategy)))
        print()
