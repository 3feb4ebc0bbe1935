"""Benchmark: training throughput and peak memory of the tiny preset on CPU, and the 8B memory plan.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_train.py --threads 1 --steps 8 --out bench/results/train.md

Each variant runs in its own subprocess (so that peak RSS is its own) on demo-shaped
sequences: 128 px images -> 16x16 codes (codebook 512), a ~12-token prompt and ~40-token
interpretation, BPE vocab 1024, joint mode (~620 tokens per sequence), micro-batch 8.

* ``progemu``: one optimiser step of ``progemu.train`` -- ``TargetLoss`` (the lm-head only on
  labelled positions, summed CE) + backward + clip + AdamW;
* ``reference``: the same step with transformers' own loss (``model(..., labels=...)``: full
  ``[B, T, V]`` logits, mean CE) -- measured in the same run for the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

TEXTS = ["Mild pleural effusion has developed in the left lower lung.",
         "There is blunting of the left costophrenic angle, which was previously sharp, indicating a small effusion."] * 50


def _one_variant(variant: str, steps: int, threads: int, batch: int) -> dict:
    import numpy as np
    import torch
    from transformers import Emu3ForCausalLM

    from progemu.model.layout import TokenLayout
    from progemu.model.presets import text_config
    from progemu.model.text_tokenizer import train_text_tokenizer
    from progemu.train.data import collate
    from progemu.train.objective import TargetLoss
    from progemu.train.optim import OptimConfig, build_optimizer

    torch.set_num_threads(threads)
    tokenizer = train_text_tokenizer(TEXTS, 512, vocab_size=1024)
    layout = TokenLayout.from_tokenizer(tokenizer, (16, 16), 512)
    rng = np.random.default_rng(0)
    prompt = tokenizer.encode(TEXTS[0], add_special_tokens=False)
    interpretation = tokenizer.encode(TEXTS[1] + " " + TEXTS[0], add_special_tokens=False)
    examples = [layout.build(rng.integers(0, 512, (16, 16)), prompt, rng.integers(0, 512, (16, 16)), interpretation)
                for _ in range(batch)]
    tensors = collate(examples, layout.pad_id)
    torch.manual_seed(0)
    model = Emu3ForCausalLM(text_config("tiny", layout)).train()
    wrapped = TargetLoss(model, layout.visual_offset, layout.codebook_size)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        if variant == "progemu":
            sums = wrapped(**tensors)
            loss = sums[0] / sums[1]
        else:
            loss = model(**tensors).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    step()  # warm-up (allocator, kernels)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / steps
    tokens = int(tensors["attention_mask"].sum())
    return {"variant": variant, "seq_len": int(tensors["input_ids"].shape[1]), "batch": batch, "threads": threads,
            "s_per_step": seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_training_mib": rss_before / 1024,
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}


def summarise_run(out: Path, note: str) -> list[str]:
    """Loss curve (mean over 10-step windows), throughput and held-out loss of a real training run."""
    import statistics

    from progemu.utils.atomic import read_jsonl

    records = read_jsonl(out / "log.jsonl")
    lines = ["## A real run: tiny preset on a curated synthetic world", "", note, "",
             "| steps | loss | image-token loss | text-token loss |", "| --- | ---: | ---: | ---: |"]
    for start in range(0, len(records), max(1, len(records) // 10)):
        window = records[start:start + 10]
        mean = lambda key: statistics.mean(r[key] for r in window if r.get(key) is not None)  # noqa: E731
        lines.append(f"| {window[0]['step']}-{window[-1]['step']} | {mean('loss'):.3f} | {mean('loss_image'):.3f} | {mean('loss_text'):.3f} |")
    tokens = sum(r["tokens"] for r in records)
    lines += ["", f"{len(records)} steps, {tokens} tokens in {records[-1]['elapsed_s']:.0f} s: "
              f"{tokens / records[-1]['elapsed_s']:.0f} tokens/s overall (median step "
              f"{statistics.median(r['tokens_per_s'] for r in records):.0f} tokens/s), checkpoints included.", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="write a Markdown report here")
    parser.add_argument("--demo-run", default=None, help="OUT of a real `progemu train` run: summarise its log.jsonl")
    parser.add_argument("--demo-note", default="", help="how the demo run was made (command, data)")
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(_one_variant(args.variant, args.steps, args.threads, args.batch)))
        return 0
    results = []
    for variant in ("progemu", "reference"):
        command = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps), "--threads", str(args.threads),
                   "--batch", str(args.batch)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    ours, reference = results
    load = os.getloadavg()
    from progemu.train.memory_plan import format_plan, memory_plan

    lines = [
        "# Training benchmark", "",
        f"Command: `OMP_NUM_THREADS={args.threads} .venv/bin/python bench/bench_train.py --threads {args.threads} "
        f"--steps {args.steps} --batch {args.batch}`", "",
        f"Machine: {platform.machine()} CPU, 2 cores shared with other jobs (load average {load[0]:.1f} at the end), "
        f"torch threads = {args.threads}; "
        f"tiny preset ({ours['parameters_m']:.2f} M parameters), joint sequences of {ours['seq_len']} tokens, micro-batch {args.batch}.", "",
        "| variant | s / step | tokens / s | peak RSS (MiB) | RSS before training (MiB) | training peak - before (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['variant']} | {r['s_per_step']:.3f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['rss_before_training_mib']:.0f} | {r['peak_rss_mib'] - r['rss_before_training_mib']:.0f} |")
    lines += ["", f"Ratio progemu / reference: throughput x{ours['tokens_per_s'] / reference['tokens_per_s']:.2f}, "
              f"peak RSS x{ours['peak_rss_mib'] / reference['peak_rss_mib']:.2f} (reference = transformers' own loss "
              "on full logits, same model, optimiser and batch).", "",
              "## Dry-run memory plan: Emu3-Gen 8B shape on 4 x 80 GB (`python -m progemu.train.memory_plan`)", ""]
    for strategy in ("fsdp", "ddp"):
        lines += [format_plan(memory_plan("emu3-8b", world_size=4, strategy=strategy)), ""]
    if args.demo_run:
        lines += summarise_run(Path(args.demo_run), args.demo_note)
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
