"""Does a counterfactual keep a *real* patient? NCC and an inserted effusion on real Hannover priors.

Two measurements on real PA radiographs that no model or tokenizer of the demo saw (the patients of
the first ten ``pa`` rows of ``hannover/data.csv``, held out of the real-anatomy world):

1. **Keeping the patient**: prompt "New small left pleural effusion." on the ten priors; mean
   NCC(prior, counterfactual) at 128 px; the same for the tokenizer's reconstruction of the prior
   (the ceiling of a token model) for comparison. A figure puts each prior beside its counterfactual.
2. **The change where it belongs**: prompt "New large left pleural effusion." on those of the ten
   with a human-drawn lung mask; the lower third of the patient's left lung (the image's right
   lung, radiological convention) must whiten: mean z-scored intensity (each image z-scored over
   the whole image) rises by >= 0.3 sd vs the prior, while NCC outside that region stays >= 0.75.

    python bench/bench_real_priors.py --model demo --out bench/results/real_priors
    python bench/bench_real_priors.py --model runs/x/model --anchor 2 --out /tmp/rp --label "aligned+anchor"

Writes ``OUT/real_priors.json``, ``OUT/real_priors.md`` and ``OUT/real_priors.png``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

SIZE = 128
KEEP_PROMPT = "New small left pleural effusion."
EFFUSION_PROMPT = "New large left pleural effusion."


def shared_real() -> Path:
    here = Path(__file__).resolve()
    for candidate in (Path("/work/shared/data/real"), here.parents[2] / "shared" / "data" / "real"):
        if candidate.is_dir():
            return candidate
    raise SystemExit("real data not found: expected ../shared/data/real beside the repository")


def first_pa_rows(hannover: Path, count: int = 10) -> list[dict]:
    with open(hannover / "data.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["projection"] == "pa"]
    return rows[:count]


def left_lung_base(mask: np.ndarray) -> np.ndarray:
    """bool [H, W]: the lower third of the patient's left lung (the mask component on the image's right)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count < 2:
        raise ValueError("lung mask has fewer than two components")
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    two = np.argsort(sizes)[-2:] + 1
    centres = [ndimage.center_of_mass(labels == k)[1] for k in two]
    left = labels == two[int(np.argmax(centres))]  # patient's left = image right on a PA view
    rows = np.flatnonzero(left.any(axis=1))
    top = rows[0] + 2 * (rows[-1] - rows[0] + 1) // 3
    base = left.copy()
    base[:top] = False
    return base


def zscore(image: np.ndarray) -> np.ndarray:
    return (image - image.mean()) / max(float(image.std()), 1e-6)


def masked_ncc(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> float:
    from progemu.evaluate.preservation import ncc

    return ncc(a[keep], b[keep])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="progemu checkpoint directory, or 'demo'")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--label", default=None, help="name of this configuration in the tables")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anchor", type=float, default=None, help="override the model's anchor")
    parser.add_argument("--cfg", type=float, default=None, help="override the model's image CFG scale")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--gen-option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other sampling setting, e.g. top_k=64 (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from progemu.data.images import model_input, read_image
    from progemu.evaluate.preservation import ncc, reconstructed_priors
    from progemu.generate.model_defaults import resolve_model_dir
    from progemu.generate.pipeline import ProgEmuPipeline

    torch.set_num_threads(args.threads)
    real = shared_real() / "hannover"
    rows = first_pa_rows(real)
    paths = [real / "png" / f"{r['image_id']}.png" for r in rows]
    model_dir = resolve_model_dir(args.model)
    pipe = ProgEmuPipeline.from_pretrained(model_dir)
    sampling = {k: v for k, v in {"anchor": args.anchor, "cfg_scale": args.cfg, "temperature": args.temperature}.items()
                if v is not None}
    for option in args.gen_option:
        key, _, value = option.partition("=")
        sampling[key] = float(value) if "." in value or "e" in value else int(value)
    started = time.perf_counter()
    priors = [read_image(p) for p in paths]
    keep = pipe.generate_batch(priors, [KEEP_PROMPT] * len(priors), seed=args.seed, **sampling)
    seconds = time.perf_counter() - started
    recon = reconstructed_priors(model_dir / "image_tokenizer", priors)
    small = lambda x: model_input(x, SIZE)  # noqa: E731
    keep_ncc = [ncc(small(p), small(r.counterfactuals[0])) for p, r in zip(priors, keep)]
    recon_ncc = [ncc(small(p), small(r)) for p, r in zip(priors, recon)]

    # the inserted effusion, on the priors that have a human lung mask
    masked = [(i, real / "lung_masks" / f"{rows[i]['image_id']}.png") for i in range(len(rows))]
    masked = [(i, m) for i, m in masked if m.exists()]
    effusion = pipe.generate_batch([priors[i] for i, _ in masked], [EFFUSION_PROMPT] * len(masked), seed=args.seed,
                                   **sampling)
    per_case = []
    for (i, mask_path), result in zip(masked, effusion):
        mask = np.asarray(Image.open(mask_path).convert("L").resize((SIZE, SIZE), Image.Resampling.NEAREST)) > 127
        region = left_lung_base(mask)
        prior, cf = small(priors[i]), small(result.counterfactuals[0])
        rise = float(zscore(cf)[region].mean() - zscore(prior)[region].mean())
        per_case.append({"image_id": rows[i]["image_id"], "rise_sd": rise, "ncc_elsewhere": masked_ncc(prior, cf, ~region),
                         "interpretation": result.interpretation})
    summary = {
        "label": args.label or str(args.model), "model": str(model_dir), "sampling": keep[0].settings,
        "n_keep": len(priors), "mean_ncc_prior_counterfactual": float(np.mean(keep_ncc)),
        "mean_ncc_prior_reconstruction": float(np.mean(recon_ncc)), "ncc_per_prior": keep_ncc,
        "n_effusion": len(per_case), "effusion_mean_rise_sd": float(np.mean([c["rise_sd"] for c in per_case])) if per_case else None,
        "effusion_mean_ncc_elsewhere": float(np.mean([c["ncc_elsewhere"] for c in per_case])) if per_case else None,
        "effusion_cases_passing": int(sum(c["rise_sd"] >= 0.3 and c["ncc_elsewhere"] >= 0.75 for c in per_case)),
        "effusion_cases": per_case, "generation_seconds_keep": round(seconds, 1), "image_ids": [r["image_id"] for r in rows],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_priors.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    _figure(out / "real_priors.png", [small(p) for p in priors], [small(r.counterfactuals[0]) for r in keep],
            [small(r) for r in recon])
    (out / "real_priors.md").write_text(_markdown(summary), encoding="utf-8")
    print(_markdown(summary))
    return 0


def _figure(path: Path, priors, counterfactuals, reconstructions) -> None:
    """Three rows: real priors, their reconstructions, their counterfactuals (128 px each)."""
    from progemu.utils.atomic import atomic_save_png

    rows = [np.concatenate(group, axis=1) for group in (priors, reconstructions, counterfactuals)]
    atomic_save_png(path, np.concatenate(rows, axis=0))


def _markdown(s: dict) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    return (f"| configuration | NCC(prior, counterfactual) | NCC(prior, reconstruction) | effusion rise (sd) | "
            f"NCC elsewhere | cases passing |\n|---|---|---|---|---|---|\n"
            f"| {s['label']} | {fmt(s['mean_ncc_prior_counterfactual'])} | {fmt(s['mean_ncc_prior_reconstruction'])} | "
            f"{fmt(s['effusion_mean_rise_sd'])} | {fmt(s['effusion_mean_ncc_elsewhere'])} | "
            f"{s['effusion_cases_passing']} of {s['n_effusion']} |\n")


if __name__ == "__main__":
    sys.exit(main())
