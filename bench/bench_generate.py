"""Benchmark of the generation engine against transformers' ``generate()`` with a prefix constraint.

CPU section (default): the ``tiny`` model preset (random weights) with the ``demo`` tokenizer's
shape (128 px -> 16x16 codes, codebook 512), one process, same weights, same run. For each case
it times the reference (``progemu.generate.reference.reference_generate``: ``model.generate`` with
a ``prefix_allowed_tokens_fn`` and, for CFG, transformers' unbatched guidance) and our
``ConstrainedSampler`` and checks that greedy ids are identical.

GPU section (``--gpu``): the 8B Emu3-Gen shape with random bf16 weights at 512 px (64x64 codes,
Emu3's real special ids), seconds per counterfactual with and without CFG at batch 1 and 8, plus
one reference ``generate()`` run at batch 1 for the ratio. One command::

    python bench/bench_generate.py --gpu --out bench/results/generate_gpu.md

Writes a Markdown table (``--out``) and prints it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from progemu.generate.reference import reference_generate
from progemu.generate.sampler import ConstrainedSampler, SamplingSettings
from progemu.model.layout import TokenLayout


def _qwen_size_ids(grid: int) -> tuple[int, ...]:
    """Qwen BPE ids of "H*W" written digit by digit ('0' = 15 ... '9' = 24, '*' = 9): (21, 19, 9, 21, 19) for 64."""
    digits = [15 + int(c) for c in str(grid)]
    return (*digits, 9, *digits)


def synthetic_layout(grid: int, codebook: int, bpe: int, emu3_ids: bool = False) -> TokenLayout:
    """A layout of the right shape without a trained tokenizer (ids as Emu3's or compact)."""
    if emu3_ids:  # Emu3's real ids (formats.md §4); "64*64" is 5 digit/char tokens in Qwen's BPE
        return TokenLayout(grid_h=grid, grid_w=grid, codebook_size=codebook, bos_id=151849, eos_id=151850, pad_id=151643,
                           eol_id=151846, eof_id=151847, boi_id=151852, eoi_id=151853, image_token_id=151851,
                           visual_offset=151854, size_text_ids=_qwen_size_ids(grid), text_vocab_size=151854)
    s = bpe  # compact: BPE ids, then the 8 specials in Emu3's order, then the codes
    return TokenLayout(grid_h=grid, grid_w=grid, codebook_size=codebook, pad_id=s, eol_id=s + 1, eof_id=s + 2, bos_id=s + 3,
                       eos_id=s + 4, image_token_id=s + 5, boi_id=s + 6, eoi_id=s + 7, visual_offset=s + 8,
                       size_text_ids=(17, 22, 10, 17, 22), text_vocab_size=s + 8)


def make_model(preset: str, layout: TokenLayout, device: str, dtype: torch.dtype, seed: int = 0):
    from transformers import Emu3ForCausalLM

    from progemu.model.presets import text_config

    torch.manual_seed(seed)
    config = text_config(preset, layout, initializer_range=0.05)
    with torch.device(device):
        model = Emu3ForCausalLM(config)
    return model.to(dtype).eval()


def make_prefixes(layout: TokenLayout, count: int, seed: int = 0, prompt_tokens: int = 20) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    prefixes = []
    for _ in range(count):
        codes = torch.randint(0, layout.codebook_size, layout.grid, generator=generator)
        prompt = torch.randint(0, min(layout.text_vocab_size, 1000), (prompt_tokens,), generator=generator).tolist()
        prefixes.append(layout.prefix(codes, prompt))
    return prefixes


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Clock:
    """Wall seconds and this process's CPU seconds (the CPU figure is robust to other jobs on a shared machine)."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_reference(model, layout, prefixes, settings, device) -> tuple[Clock, int, list[list[int]]]:
    with Clock(device) as clock:
        outputs = [reference_generate(model, layout, p, settings=settings) for p in prefixes]
    return clock, sum(len(o) for o in outputs), outputs


def time_ours(sampler, prefixes, settings, device, batch: int) -> tuple[Clock, int, list[list[int]]]:
    outputs = []
    with Clock(device) as clock:
        for i in range(0, len(prefixes), batch):
            chunk = prefixes[i:i + batch]
            out = sampler.generate(chunk, settings=settings, seeds=list(range(i, i + len(chunk))))
            outputs += [s[0] for s in out.sequences]
    return clock, sum(len(o) for o in outputs), outputs


def row(name, clock, tokens, count, reference=None, identical=None, use_cpu: bool = True) -> dict:
    """One table row; the speed-up is on CPU seconds for the CPU section (wall seconds on GPU)."""
    seconds = clock.cpu if use_cpu else clock.wall
    return {"case": name, "s_per_counterfactual": clock.wall / count, "cpu_s_per_counterfactual": clock.cpu / count,
            "tokens_per_s": tokens / seconds,
            "speedup_vs_reference": None if reference is None else (reference.cpu if use_cpu else reference.wall) / seconds,
            "identical_greedy_ids": identical}


def cpu_bench(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    layout = synthetic_layout(16, 512, 1024)
    model = make_model("tiny", layout, "cpu", torch.float32)
    sampler = ConstrainedSampler(model, layout)
    prefixes = make_prefixes(layout, args.requests)
    rows = []
    base = SamplingSettings(temperature=0.0, max_text_tokens=args.text_tokens)
    # warm-up (allocator, kernels)
    sampler.generate(prefixes[:1], settings=dataclasses.replace(base, max_text_tokens=2))
    for label, settings in (("greedy", base), ("greedy + CFG 3", dataclasses.replace(base, cfg_scale=3.0, cfg_text_scale=3.0))):
        reference, ref_tokens, ref_out = time_reference(model, layout, prefixes, settings, "cpu")
        rows.append(row(f"transformers generate(), {label}, batch 1", reference, ref_tokens, len(prefixes)))
        for batch in (1, args.batch):
            clock, our_tokens, our_out = time_ours(sampler, prefixes, settings, "cpu", batch)
            rows.append(row(f"ConstrainedSampler, {label}, batch {batch}", clock, our_tokens, len(prefixes), reference,
                            our_out == ref_out))
    sampled = SamplingSettings(temperature=1.0, top_k=2048, max_text_tokens=args.text_tokens)
    clock, our_tokens, _ = time_ours(sampler, prefixes, sampled, "cpu", args.batch)
    rows.append(row(f"ConstrainedSampler, top-k 2048 sampling, batch {args.batch}", clock, our_tokens, len(prefixes)))
    return rows


def gpu_bench(args) -> list[dict]:
    if args.smoke:  # the same code path, tiny and on the CPU: checks the script itself without a GPU
        device, layout, preset, dtype = "cpu", synthetic_layout(4, 64, 1024), "tiny", torch.float32
    else:
        device, layout, preset, dtype = "cuda", synthetic_layout(args.grid, 32768, 0, emu3_ids=True), "emu3-8b", torch.bfloat16
    start = time.perf_counter()
    model = make_model(preset, layout, device, dtype)
    print(f"random {preset} model built in {time.perf_counter() - start:.0f} s", flush=True)
    sampler = ConstrainedSampler(model, layout, cache="static")
    shape = f"{preset} {layout.grid_h}x{layout.grid_w} codes"
    prefixes = make_prefixes(layout, 8)
    rows = []
    text = args.text_tokens
    plain = SamplingSettings(temperature=1.0, top_k=2048, max_text_tokens=text)
    guided = dataclasses.replace(plain, cfg_scale=3.0)
    sampler.generate(prefixes[:1], settings=dataclasses.replace(plain, max_text_tokens=1))  # warm-up
    for label, settings in (("no CFG", plain), ("CFG 3", guided)):
        for batch in (1, 8):
            clock, tokens, _ = time_ours(sampler, prefixes[:batch], settings, device, batch)
            rows.append(row(f"ConstrainedSampler {shape}, {label}, batch {batch}", clock, tokens, batch, use_cpu=False))
            print(rows[-1], flush=True)
    if not args.skip_reference:
        clock, tokens, _ = time_reference(model, layout, prefixes[:1], plain, device)
        rows.append(row(f"transformers generate() {shape}, no CFG, batch 1", clock, tokens, 1, use_cpu=False))
        rows[0]["speedup_vs_reference"] = clock.wall / rows[0]["s_per_counterfactual"]
        print(rows[-1], flush=True)
    if device == "cuda":
        rows.append({"case": "peak GPU memory (GiB)", "value": torch.cuda.max_memory_allocated() / 2**30})
    return rows


def to_markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| case | wall s / counterfactual | CPU s / counterfactual | tokens / s | speed-up vs reference | "
                         "identical greedy ids |", "| --- | ---: | ---: | ---: | ---: | :---: |"]
    for r in rows:
        if "value" in r:
            lines.append(f"| {r['case']} | {r['value']:.1f} | | | | |")
            continue
        speed = "" if r["speedup_vs_reference"] is None else f"{r['speedup_vs_reference']:.2f}x"
        same = "" if r["identical_greedy_ids"] is None else ("yes" if r["identical_greedy_ids"] else "NO")
        lines.append(f"| {r['case']} | {r['s_per_counterfactual']:.3f} | {r['cpu_s_per_counterfactual']:.3f} | "
                     f"{r['tokens_per_s']:.0f} | {speed} | {same} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="run the 8B / 512 px GPU section instead of the CPU one")
    parser.add_argument("--requests", type=int, default=4, help="CPU: counterfactuals per case")
    parser.add_argument("--batch", type=int, default=4, help="CPU: batch size of the batched case")
    parser.add_argument("--text-tokens", type=int, default=None, help="interpretation cap (CPU default 196, GPU 64)")
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch threads")
    parser.add_argument("--grid", type=int, default=64,
                        help="GPU: codes per image side (64 = 512 px as the paper; 32 = 256 px, a 4x shorter run)")
    parser.add_argument("--skip-reference", action="store_true", help="GPU: skip the (slow) reference run")
    parser.add_argument("--smoke", action="store_true", help="with --gpu: run the GPU section's code on a tiny CPU model")
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)
    if args.text_tokens is None:
        args.text_tokens = 64 if args.gpu else 196
    if args.gpu and not args.smoke and not torch.cuda.is_available():
        print("bench_generate: --gpu needs a CUDA device", file=sys.stderr)
        return 2
    rows = gpu_bench(args) if args.gpu else cpu_bench(args)
    machine = torch.cuda.get_device_name() if args.gpu and not args.smoke else f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch threads {args.threads}"
    command = "python bench/bench_generate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"Command: `{command.strip()}`  \nMachine: {machine}; torch {torch.__version__}  \n"
              f"Settings: {json.dumps({k: v for k, v in vars(args).items() if k != 'out'})}")
    table = to_markdown(rows, header)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
