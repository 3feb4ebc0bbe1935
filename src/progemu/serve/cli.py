"""``progemu serve --model DIR [--host 127.0.0.1] [--port 7860] [--data DIR] [--examples DIR]``.

Loads a checkpoint with ``ProgEmuPipeline.from_pretrained``, builds the page
(:func:`progemu.serve.app.build_app`) and serves it until Ctrl-C / SIGTERM. Gradio's upload cache
goes to a private temporary folder (mode 0700) that is deleted when the server stops, so no
upload outlives the server even if the process is restarted elsewhere.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main", "load_pipeline", "collect_examples"]

log = logging.getLogger("progemu.serve")


def build_parser() -> argparse.ArgumentParser:
    from .inputs import ServeLimits

    from progemu.utils.checks import ArgumentParser, HelpFormatter, float_range, int_range, positive_int

    defaults = ServeLimits()
    parser = ArgumentParser(
        prog="progemu serve", formatter_class=HelpFormatter,
        description="Web page for clinicians and teachers: upload a prior radiograph, state a hypothesis, "
        "see the counterfactual follow-up, its interpretation and attention maps. Counterfactuals are not diagnoses.",
    )
    parser.add_argument("--model", required=True, type=Path, help="checkpoint directory (from `progemu train`; "
                        "'demo' = the packaged demo model); its saved sampling settings are the page's defaults")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                        "0.0.0.0 exposes the page to the network -- put it behind a login)")
    parser.add_argument("--port", type=int_range(0, 65535), default=7860, help="port, 0 = any free port (default 7860)")
    parser.add_argument("--examples", type=Path, action="append", default=[], metavar="DIR",
                        help="folder of example priors (images, optional examples.jsonl); repeatable")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="curated ICG-CXR dataset: offer the priors of its test split as examples")
    parser.add_argument("--data-split", default="test", help="split of --data to offer (default test)")
    parser.add_argument("--max-examples", type=positive_int, default=24, help="at most this many examples from --data")
    parser.add_argument("--device", default=None, help="torch device for the model (default: the pipeline's choice)")
    parser.add_argument("--max-upload-mb", type=float_range(0, min_open=True), default=defaults.max_upload_mb,
                        help="upload size limit in MB")
    parser.add_argument("--max-side", type=int_range(defaults.min_side), default=defaults.max_side,
                        help="largest accepted image side in px")
    parser.add_argument("--max-samples", type=positive_int, default=defaults.max_samples, help="most samples per request")
    parser.add_argument("--queue-size", type=positive_int, default=defaults.queue_size,
                        help="requests that may wait in the queue")
    parser.add_argument("--keep-minutes", type=float_range(0, min_open=True), default=60.0,
                        help="delete cached uploads and results older than this even while a tab is open (default 60)")
    parser.add_argument("--verbose", action="store_true", help="also show third-party progress bars (weight loading)")
    return parser


def load_pipeline(model_dir: Path, device: str | None = None) -> Any:
    """``ProgEmuPipeline.from_pretrained(model_dir)``; raises ``SystemExit``-friendly errors."""
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"{model_dir}: checkpoint directory not found; train one with `progemu train` (or `progemu demo`) "
            "and pass its output folder to --model"
        )
    try:
        from progemu.generate.pipeline import ProgEmuPipeline
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("progemu"):
            raise RuntimeError(f"the generation pipeline is not available in this install ({error.name} missing)") from None
        raise
    kwargs = {"device": device} if device else {}
    return ProgEmuPipeline.from_pretrained(model_dir, **kwargs)


def collect_examples(args: argparse.Namespace) -> list:
    """Examples from ``--examples`` folders, ``MODEL/examples`` if present, and ``--data``'s split."""
    from .examples import examples_from_dataset, find_examples

    folders = list(args.examples)
    bundled = args.model / "examples"
    if not folders and bundled.is_dir():
        folders.append(bundled)
    examples = []
    for folder in folders:
        examples.extend(find_examples(folder))
    if args.data is not None:
        examples.extend(examples_from_dataset(args.data, split=args.data_split, limit=args.max_examples))
    return examples


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    # SIGTERM (systemd, docker stop, a test) must run the same clean-up as Ctrl-C.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


def main(argv: list[str] | None = None) -> int:
    from progemu.utils.extras import prepare_command

    prepare_command("serve", sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from progemu.generate.model_defaults import resolve_model_dir

    args.model = resolve_model_dir(args.model)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .inputs import ServeLimits

    limits = ServeLimits(
        max_upload_mb=args.max_upload_mb, max_side=args.max_side, max_samples=args.max_samples, queue_size=args.queue_size
    )
    try:
        from progemu.utils.checks import check_device

        check_device(args.device)
        examples = collect_examples(args)
        pipeline = load_pipeline(args.model, args.device)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        print(f"progemu serve: {error}", file=sys.stderr)
        return 2

    # Private, per-process upload cache; set before gradio builds anything (components read it then).
    cache = Path(tempfile.mkdtemp(prefix="progemu-serve-"))
    os.chmod(cache, 0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from .app import build_app, launch

    demo = build_app(pipeline, examples=examples, limits=limits, keep_minutes=args.keep_minutes)
    _stop_on_sigterm()
    stop = threading.Event()
    try:
        url = launch(demo, host=args.host, port=args.port, quiet=True)
        log.info("serving %d example(s) at %s (Ctrl-C to stop)", len(examples), url)
        print(f"progemu serve: open {url} in a browser (Ctrl-C to stop)", flush=True)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        log.info("stopping")
    except OSError as error:  # port in use, address not available
        print(f"progemu serve: cannot start the server on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    finally:
        demo.close()
        shutil.rmtree(cache, ignore_errors=True)
    return 0
