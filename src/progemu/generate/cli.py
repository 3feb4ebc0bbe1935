"""``progemu generate``: one prior + prompt -> counterfactual, interpretation, maps and result.json.

Examples::

    progemu generate --model CKPT --prior prior.png --prompt "New small left pleural effusion." --out out/
    progemu generate --model CKPT --prior prior.dcm --prompt "..." --out out/ --samples 4 --cfg 3 --seed 7
    progemu generate --model IMAGE_CKPT --text-model TEXT_CKPT --prior prior.png --prompt "..." --out out/   # ProgEmu²

The output contract is documented in :mod:`progemu.generate.pipeline`.
"""
from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main", "build_parser"]

log = logging.getLogger("progemu.generate")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class _ProgressBar:
    """A tqdm bar (stderr) driven by the pipeline's ``progress(done, total, description)`` callback."""

    def __enter__(self):
        self.bar = None
        return self

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.bar is None or self.bar.total != total:
            from tqdm.auto import tqdm

            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc="generating", unit="step", leave=False)
        self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progemu generate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (joint ProgEmu; with --text-model: the image-only model)")
    parser.add_argument("--text-model", default=None, help="text-only checkpoint: run the ProgEmu² cascade")
    parser.add_argument("--prior", required=True, help="prior radiograph: PNG, JPG or DICOM (registered, as in ICG-CXR)")
    parser.add_argument("--prompt", required=True, help="hypothesised progression, e.g. 'New small left pleural effusion.'")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--samples", type=int, default=1, help="number of counterfactuals to draw (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same output)")
    parser.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale on image tokens (1 = off; Emu3 uses 3)")
    parser.add_argument("--cfg-text", type=float, default=1.0, help="guidance scale on interpretation tokens (1 = off)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy")
    parser.add_argument("--text-temperature", type=float, default=None,
                        help="temperature for the interpretation only (default: --temperature; 0 = greedy text)")
    parser.add_argument("--top-k", type=int, default=2048, help="top-k (0 = off; official 2048)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus top-p (1 = off)")
    parser.add_argument("--max-text-tokens", type=int, default=196, help="cap on interpretation tokens (official ~196)")
    parser.add_argument("--no-attention", action="store_true", help="skip the interpretation attention maps")
    parser.add_argument("--attention-layers", type=_int_list, default=None, help="layers to average, e.g. '-4,-3,-2,-1' (default all)")
    parser.add_argument("--attention-heads", type=_int_list, default=None, help="heads to average (default all)")
    parser.add_argument("--phrases", choices=("sentence", "clause"), default="sentence", help="unit of the attention maps")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None, help="model dtype (default: as saved)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import torch

        from .attention import AttentionSettings
        from .pipeline import CascadePipeline, ProgEmuPipeline

        dtype = getattr(torch, args.dtype) if args.dtype else None
        if args.text_model:
            pipe = CascadePipeline(args.model, args.text_model, device=args.device, dtype=dtype)
        else:
            pipe = ProgEmuPipeline.from_pretrained(args.model, device=args.device, dtype=dtype)
        attention = AttentionSettings(layers=args.attention_layers, heads=args.attention_heads, phrases=args.phrases)
        with _ProgressBar() as bar:
            result = pipe(args.prior, args.prompt, samples=args.samples, seed=args.seed, attention=not args.no_attention,
                          attention_settings=attention, progress=bar, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, cfg_scale=args.cfg, cfg_text_scale=args.cfg_text,
                          max_text_tokens=args.max_text_tokens, text_temperature=args.text_temperature)
        out = result.save(args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"progemu generate: error: {error}", file=sys.stderr)
        return 2
    # report text stays out of the INFO log (credentialed data); the file holds it
    log.info("wrote %d counterfactual(s), interpretation (%d phrases) and result.json to %s in %.1f s",
             len(result.counterfactuals), len(result.phrases), out,
             sum(v for k, v in result.timings.items() if k.endswith("_s")))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
