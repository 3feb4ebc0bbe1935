"""Benchmark: interpretation quality given the *real* follow-up image (teacher-forced image).

``progemu evaluate`` scores the interpretation that follows the model's own counterfactual, so a
weak image part drags the text down with it. This script isolates the text half: for each
pair it feeds ``BOS IMG(prior) prompt IMG(real follow-up)`` and decodes the interpretation
greedily (text mode of :class:`progemu.generate.sampler.ConstrainedSampler`, no guidance),
then scores it with the same BLEU-3 / METEOR / ROUGE-L code as ``progemu evaluate``
(pycocoevalcap). The retrieval interpretation (nearest training prompt by TF-IDF, the text half
of the copy-prior row) is scored in the same run as the reference. Used for the training
ablations in BENCHMARKS.md ("demo"): which checkpoint / loss weighting learned the text.

Run::

    .venv/bin/python bench/bench_interpretation.py --data runs/demo/icg-cxr \\
        --model a=runs/a/weights/model --model b=runs/b/weights/model --out bench/results/interpretation.md

``--split train`` shows memorisation (train ~1.0 while test stays lower).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch


def teacher_forced_interpretations(pipe, pairs, codes: dict, batch_size: int = 8) -> list[str]:
    """Greedy interpretation of each pair given its prior, prompt and real follow-up codes."""
    from progemu.generate.sampler import SamplingSettings

    layout = pipe.layout
    settings = SamplingSettings(temperature=0.0, text_temperature=0.0, cfg_scale=1.0, cfg_text_scale=1.0)
    texts: list[str] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        prefixes = [layout.prefix(codes[str(p.prior_image)], pipe.prompt_ids(p.prompt), codes[str(p.followup_image)]) for p in chunk]
        out = pipe.sampler.generate(prefixes, mode="text", settings=settings)
        for request in out.sequences:
            ids = [t for t in request[0] if t != layout.eos_id]
            texts.append(pipe.text_tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="curated dataset (with its code cache, progemu tokenize)")
    parser.add_argument("--model", action="append", required=True, help="NAME=checkpoint directory (repeatable)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs Java)")
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from progemu.data.icgcxr import load_pairs
    from progemu.evaluate.baselines import retrieval_interpretations
    from progemu.evaluate.text_metrics import text_scores
    from progemu.generate.pipeline import ProgEmuPipeline
    from progemu.train.data import load_codes

    pairs = load_pairs(args.data, split=args.split, check_files=False)[: args.max_pairs]
    references = [p.interpretation for p in pairs]
    meteor = not args.no_meteor
    rows = []
    retrieved = retrieval_interpretations(load_pairs(args.data, split="train", check_files=False), [p.prompt for p in pairs])
    rows.append(("retrieval (copy-prior's text, reference)", text_scores(retrieved, references, meteor=meteor), None))
    for spec in args.model:
        name, _, directory = spec.rpartition("=")  # a name may hold "=", a path rarely does
        if not directory:
            parser.error(f"--model wants NAME=DIR, got {spec!r}")
        pipe = ProgEmuPipeline.from_pretrained(directory, device="cpu")
        codes = load_codes(args.data, pairs, pipe.image_tokenizer, encode_missing=False)
        clock = time.perf_counter()
        texts = teacher_forced_interpretations(pipe, pairs, codes)
        rows.append((name, text_scores(texts, references, meteor=meteor), time.perf_counter() - clock))
        print(name, rows[-1][1], flush=True)

    lines = [f"Command: `{' '.join(['python', 'bench/bench_interpretation.py', *(argv if argv is not None else sys.argv[1:])])}`  ",
             f"Machine: {platform.machine()}, torch {torch.__version__}, threads {args.threads}; "
             f"{len(pairs)} pairs of split `{args.split}`", "",
             "| interpretation | BLEU-3 | METEOR | ROUGE-L | seconds |", "| --- | ---: | ---: | ---: | ---: |"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for name, scores, seconds in rows:
        lines.append(f"| {name} | {fmt(scores['BLEU-3'])} | {fmt(scores['METEOR'])} | {fmt(scores['ROUGE-L'])} | "
                     f"{'' if seconds is None else f'{seconds:.0f}'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        Path(args.out).with_suffix(".json").write_text(json.dumps({n: s for n, s, _ in rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
