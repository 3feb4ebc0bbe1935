"""``progemu generate``: one prior + prompt -> counterfactual, interpretation, maps and result.json.

Examples::

    progemu generate --model CKPT --prior prior.png --prompt "New small left pleural effusion." --out out/
    progemu generate --model demo --prior prior.png --prompt "..." --out out/   # the packaged demo model
    progemu generate --model CKPT --prior prior.dcm --prompt "..." --out out/ --samples 4 --cfg 3 --seed 7
    progemu generate --model CKPT --prior prior.png --prompt "..." --out out/ --recipe official   # docs/paper.md
    progemu generate --model IMAGE_CKPT --text-model TEXT_CKPT --prior prior.png --prompt "..." --out out/   # ProgEmu²

Sampling flags left out take the settings saved with the model (``progemu.json`` ``"sampling"``, see
:mod:`progemu.generate.model_defaults`), else the official defaults; ``result.json`` records the
settings used. The output contract is documented in :mod:`progemu.generate.pipeline`.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from progemu.utils.checks import ArgumentParser, UsageError, float_range, nonneg_int, positive_int

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
    from progemu.utils.checks import HelpFormatter

    parser = ArgumentParser(prog="progemu generate", description=__doc__.split("\n\n")[0],
                            formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (joint ProgEmu; with --text-model: the image-only model; "
                        "'demo' = the packaged demo model)")
    parser.add_argument("--text-model", default=None, help="text-only checkpoint: run the ProgEmu² cascade")
    parser.add_argument("--prior", required=True, help="prior radiograph: PNG, JPG or DICOM (registered, as in ICG-CXR)")
    parser.add_argument("--prompt", required=True, help="hypothesised progression, e.g. 'New small left pleural effusion.'")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--samples", type=positive_int, default=1, help="number of counterfactuals to draw (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same output)")
    # sampling: None = the value saved with the model (progemu.json "sampling"), else the official default
    parser.add_argument("--cfg", type=float_range(0), default=None, help="classifier-free guidance scale on image tokens "
                        "(1 = off; default: the model's saved setting, else 1; Emu3 uses 3)")
    parser.add_argument("--cfg-prompt", type=float_range(0), default=None,
                        help="dual guidance: this scale for the prompt, --cfg for the prior (needs a model trained with "
                             "--prompt-only-dropout; default: the model's saved setting, else single guidance)")
    parser.add_argument("--cfg-text", type=float_range(0), default=None,
                        help="guidance scale on interpretation tokens (1 = off; default: the model's, else 1)")
    parser.add_argument("--temperature", type=float_range(0), default=None,
                        help="sampling temperature, 0 = greedy (default: the model's saved setting, else 1)")
    parser.add_argument("--text-temperature", type=float_range(0), default=None,
                        help="temperature for the interpretation only, 0 = greedy text (default: the model's saved "
                        "setting, else --temperature)")
    parser.add_argument("--top-k", type=nonneg_int, default=None, help="top-k, 0 = off (default: the model's saved setting, "
                        "else the official 2048)")
    parser.add_argument("--top-p", type=float_range(0, 1, min_open=True), default=None, help="nucleus top-p, 1 = off (default: the model's, else 1)")
    parser.add_argument("--anchor", type=float_range(0), default=None,
                        help="logit bonus for the prior's code at the same cell, keeping what the prompt does not change "
                             "(0 = off; default: the model's saved setting, else 0)")
    parser.add_argument("--max-text-tokens", type=positive_int, default=None,
                        help="cap on interpretation tokens (default: the model's, else the official 196)")
    parser.add_argument("--recipe", choices=("model", "official"), default="model",
                        help="defaults of the sampling flags left out: model = the model's saved settings; official = "
                             "the released inference script (top-k 2048, temperature 1, no guidance; --cfg then guides "
                             "image and text tokens); recorded in result.json")
    parser.add_argument("--no-attention", action="store_true", help="skip the interpretation attention maps")
    parser.add_argument("--attention-layers", type=_int_list, default=None, help="layers to average, e.g. '-4,-3,-2,-1' (default all)")
    parser.add_argument("--attention-heads", type=_int_list, default=None, help="heads to average (default all)")
    parser.add_argument("--phrases", choices=("sentence", "clause"), default="sentence", help="unit of the attention maps")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--skip-prior-checks", action="store_true",
                        help="do not refuse a prior that does not look like a chest radiograph (colour picture, blank, "
                             "extreme shape, non-radiograph DICOM); the web page always checks")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None, help="model dtype (default: as saved)")
    parser.add_argument("--verbose", action="store_true", help="also show third-party progress bars (weight loading)")
    return parser


#: flag attribute -> SamplingSettings field; flags left unset keep the model's saved settings
SAMPLING_FLAGS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "cfg": "cfg_scale",
                  "cfg_text": "cfg_text_scale", "max_text_tokens": "max_text_tokens", "text_temperature": "text_temperature",
                  "anchor": "anchor", "cfg_prompt": "cfg_prompt_scale"}


#: ``--recipe official``: the released inference script (scripts/infer.sh: ``--do_sample``, top-k 2048,
#: temperature 1, no ``--use_cfg_proc``), whatever the model saved; see docs/paper.md
OFFICIAL_SAMPLING = {"temperature": 1.0, "text_temperature": 1.0, "top_k": 2048, "top_p": 1.0, "cfg_scale": 1.0,
                     "cfg_text_scale": 1.0, "anchor": 0.0, "cfg_prompt_scale": None}


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling settings given on the command line (the rest come from the model, or the recipe).

    Under ``--recipe official`` a ``--cfg`` also guides the interpretation (unless ``--cfg-text`` is
    given): the official guidance is one logits processor over every generated token.
    """
    given = {field: getattr(args, flag) for flag, field in SAMPLING_FLAGS.items() if getattr(args, flag) is not None}
    if getattr(args, "recipe", None) != "official":
        return given
    if "cfg_scale" in given and "cfg_text_scale" not in given:
        given["cfg_text_scale"] = given["cfg_scale"]
    return {**OFFICIAL_SAMPLING, **given}


def main(argv: list[str] | None = None) -> int:
    from progemu.utils.extras import prepare_command

    prepare_command("generate", sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from progemu.utils.lock import OutputLockedError, output_lock

    try:
        check_inputs(args)  # seconds, before a model loads: a bad prior / prompt / flag never costs a generation
        with output_lock(args.out, "progemu generate"):
            return _generate(args)
    except UsageError as error:
        print(f"progemu generate: error: {error}", file=sys.stderr)
        return 2
    except OutputLockedError as error:
        print(f"progemu generate: error: {error}", file=sys.stderr)
        return 1


def _model_config(directory: str | Path) -> dict:
    import json

    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}  # not a complete checkpoint: loading it names what is missing
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not valid JSON ({error}); the checkpoint is damaged, copy or train it again") from None
    return config.get("text_config", config) if isinstance(config, dict) else {}


def check_inputs(args: argparse.Namespace) -> None:
    """The cheap checks: output folder, device, model folder and config, attention indices, prompt and prior
    (with the web page's radiograph plausibility checks unless ``--skip-prior-checks``)."""
    from progemu.serve.inputs import PriorError, ServeLimits, load_prior
    from progemu.utils.checks import check_device, check_in_dir, check_out_dir

    check_out_dir(args.out)
    check_device(args.device)
    try:
        from .model_defaults import resolve_model_dir

        args.model = str(resolve_model_dir(args.model))
    except ImportError:
        pass
    for flag, directory in (("--model", args.model), ("--text-model", args.text_model)):
        if directory is not None:
            check_in_dir(directory, flag, "checkpoint folder")
    config = _model_config(args.model)
    if args.text_model:
        _model_config(args.text_model)
    if not args.no_attention:
        # the interpretation (and so its attention) comes from the text model in the cascade
        attended = _model_config(args.text_model) if args.text_model else config
        for flag, values, key in (("--attention-layers", args.attention_layers, "num_hidden_layers"),
                                  ("--attention-heads", args.attention_heads, "num_attention_heads")):
            size = attended.get(key)
            for value in values or ():
                if isinstance(size, int) and not -size <= value < size:
                    raise UsageError(f"{flag}: index {value} is out of range for this model, which has {size} "
                                     f"({-size}..{size - 1}; negative counts from the end)")
    if not args.prompt.strip():
        raise UsageError("--prompt: empty; state the hypothesised progression, e.g. 'New small left pleural effusion.'")
    prior = Path(args.prior)
    if not prior.is_file():
        raise UsageError(f"--prior {prior}: {'is a folder' if prior.is_dir() else 'file not found'}; give a PNG, JPG "
                         "or DICOM radiograph")
    # the page's plausibility checks (shape, colour, blank, DICOM modality); its size limits protect a shared
    # server, so a local file has none (thumbnails and multi-megapixel originals are both fine here)
    limits = ServeLimits(max_upload_mb=1e9, max_side=1 << 16, min_side=8)
    try:
        if args.skip_prior_checks:
            from progemu.data.images import read_image

            read_image(prior)
        else:
            load_prior(prior, limits, name=str(prior))
    except PriorError as error:
        message = str(error).replace("Upload a", "Use a").replace("upload", "use")
        raise UsageError(f"--prior {message} (--skip-prior-checks to use it anyway)") from None
    except (ValueError, OSError) as error:
        raise UsageError(f"--prior {prior}: not a readable image ({error})") from None


def _stale_outputs(out: Path, document: dict) -> list[Path]:
    """Files of an earlier result in ``out`` that the new ``document`` does not list (more samples, other phrases)."""
    keep = set(document.get("counterfactuals") or [])
    keep |= {document[k] for k in ("difference", "spread") if document.get(k)}
    keep |= {entry["png"] for entry in (document.get("attention") or {}).values()}
    candidates = [*out.glob("counterfactual*.png"), out / "difference.png", out / "spread.png", *out.glob("attention/*.png")]
    return [path for path in candidates if path.is_file() and path.relative_to(out).as_posix() not in keep]


def _generate(args: argparse.Namespace) -> int:
    try:
        import torch

        from .attention import AttentionSettings
        from .pipeline import CascadePipeline, ProgEmuPipeline

        dtype = getattr(torch, args.dtype) if args.dtype else None
        try:
            if args.text_model:
                pipe = CascadePipeline(args.model, args.text_model, device=args.device, dtype=dtype)
            else:
                pipe = ProgEmuPipeline.from_pretrained(args.model, device=args.device, dtype=dtype)
        except (KeyboardInterrupt, MemoryError, UsageError, FileNotFoundError):
            raise
        except Exception as error:  # noqa: BLE001 - safetensors / transformers raise many types for a damaged file
            where = f"{args.model}{' / ' + args.text_model if args.text_model else ''}"
            reason = " ".join(str(error).split())[:300]
            raise UsageError(f"--model {where}: the checkpoint could not be loaded ({type(error).__name__}: {reason}); "
                             "it may be truncated or damaged: copy it again or re-run `progemu train`") from error
        attention = AttentionSettings(layers=args.attention_layers, heads=args.attention_heads, phrases=args.phrases)
        started = time.perf_counter()
        with _ProgressBar() as bar:
            result = pipe(args.prior, args.prompt, samples=args.samples, seed=args.seed, attention=not args.no_attention,
                          attention_settings=attention, progress=bar, **sampling_overrides(args))
        seconds = time.perf_counter() - started
        result.settings["recipe"] = args.recipe
        had_result = (Path(args.out) / "result.json").exists()
        out = result.save(args.out)
        if had_result:  # reusing an --out: drop what the previous result had and this one does not
            for stale in _stale_outputs(out, result.to_json()):
                stale.unlink()
    except (FileNotFoundError, ValueError) as error:
        print(f"progemu generate: error: {error}", file=sys.stderr)
        return 2
    # report text stays out of the INFO log (credentialed data); the file holds it
    # wall-clock seconds of the generation itself (result.timings holds rates such as tokens_per_s too)
    log.info("wrote %d counterfactual(s), interpretation (%d phrases) and result.json to %s in %.1f s",
             len(result.counterfactuals), len(result.phrases), out, seconds)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
