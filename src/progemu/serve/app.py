"""The Gradio page: ``build_app(pipeline, examples=..., limits=...) -> gr.Blocks`` and :func:`launch`.

The pipeline is injected (anything with ``pipeline(prior, prompt, samples=, cfg_scale=, seed=
[, progress=]) -> GenerationResult``), so tests drive the page with a small fake and the CLI with
``ProgEmuPipeline.from_pretrained``. The page holds no model state of its own.

Privacy and safety (see :func:`launch`): loopback by default; no analytics, version check, share
link or run history (Gradio's run history would keep inputs in the browser or a Hub bucket);
uploads and results live only in Gradio's cache: a session's files are deleted when its tab
closes (``demo.unload``), everything older than ``keep_minutes`` on a schedule (``delete_cache``)
and all of it when the server stops. Logs carry counts and timings, never a prompt, an
interpretation, a file name or pixels.

Public API endpoints (for ``gradio_client``): ``/check_prior`` (file -> preview, message),
``/compose`` (finding, side, change -> prompt) and ``/generate`` (file, example, prompt, samples,
guidance, seed -> all result views). One generation runs at a time (``default_concurrency_limit=1``);
up to ``limits.queue_size`` wait their turn with their position shown.
"""
# No ``from __future__ import annotations`` here: Gradio finds the ``gr.Request`` / ``gr.SelectData``
# parameters of the event handlers by evaluating their annotations, which must be real objects.
import inspect
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .examples import Example, unique_names
from .inputs import PriorError, ServeLimits, load_prior
from .prompts import CHANGES, FINDINGS, SIDES, compose_prompt
from .render import (
    colorize_difference,
    colorize_spread,
    grey_to_rgb,
    overlay_attention,
    phrase_color,
    phrase_spans,
    resize_grey,
    write_bundle,
)

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

__all__ = ["DISCLAIMER", "build_app", "launch", "launch_options"]

log = logging.getLogger(__name__)

DISCLAIMER = (
    "**Research and teaching use only.** Counterfactual images and interpretations are what a "
    "generative model imagines *if* the hypothesis came true. They are **not diagnoses**, not "
    "predictions for this patient, and must not be used for clinical decisions."
)
_PREVIEW_SIDE = 768  # px; a 4096-px DICOM is downscaled for the preview, not for the model
_DISPLAY_MIN_SIDE = 384  # px; small model outputs (64-256 px) are enlarged for the page only
_MAX_PHRASE_LABELS = 64  # static colour map entries ("1".."64"); phrases beyond cycle colours anyway


def _session_key(request: Any) -> str:
    key = getattr(request, "session_hash", None) if request is not None else None
    return str(key) if key else "no-session"


class _SessionFiles:
    """Files each browser session created or uploaded, deleted when the session ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, set[Path]] = {}

    def add(self, session: str, path: str | Path) -> None:
        with self._lock:
            self._paths.setdefault(session, set()).add(Path(path))

    def cleanup(self, session: str) -> int:
        with self._lock:
            paths = self._paths.pop(session, set())
        removed = 0
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
            elif path.exists():
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _preview(image: np.ndarray) -> np.ndarray:
    side = max(image.shape)
    if side > _PREVIEW_SIDE:
        scale = _PREVIEW_SIDE / side
        image = resize_grey(image, (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))))
    return grey_to_rgb(image)


def _display_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """Pixel grid for the page: at most ``_PREVIEW_SIDE`` per side (the pipeline returns the
    counterfactual at the prior's size, which may be a 3000-px DICOM)."""
    side = max(shape)
    if side <= _PREVIEW_SIDE:
        return (int(shape[0]), int(shape[1]))
    scale = _PREVIEW_SIDE / side
    return (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))


def _enlarge(rgb: np.ndarray | None) -> np.ndarray | None:
    """Enlarge a small ``uint8[H, W, 3]`` by an integer factor (pixel repetition, no smoothing) so
    the page shows it at a readable size without inventing detail; downloads keep native size."""
    if rgb is None:
        return None
    factor = int(np.ceil(_DISPLAY_MIN_SIDE / max(rgb.shape[:2])))
    if factor <= 1:
        return rgb
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def _progress_adapter(progress: Callable[..., Any]) -> Callable[..., None]:
    """A pipeline progress callback -> gr.Progress.

    Accepts ``(done, total)``, ``(fraction,)`` in [0, 1], and an optional ``desc=``/third
    positional description, so it works whichever of these forms the pipeline uses.
    """

    def callback(*args: Any, **kwargs: Any) -> None:
        desc = kwargs.get("desc") or kwargs.get("stage")
        if len(args) >= 3 and isinstance(args[2], str):
            desc = args[2]
        if len(args) >= 2 and isinstance(args[1], (int, float)) and args[1]:
            fraction = float(args[0]) / float(args[1])
        elif args and isinstance(args[0], (int, float)):
            fraction = float(args[0])
        else:
            fraction = None
        if fraction is not None:
            progress(min(max(fraction, 0.0), 1.0), desc=desc or "generating")

    return callback


def _accepts_progress(pipeline: Any) -> bool:
    try:
        parameters = inspect.signature(pipeline).parameters
    except (TypeError, ValueError):
        return False
    # Only an explicit ``progress`` parameter: ProgEmuPipeline.__call__ forwards **kwargs to its
    # sampling settings, which reject unknown names.
    return "progress" in parameters


def build_app(
    pipeline: Any,
    examples: Sequence[Example] = (),
    limits: ServeLimits = ServeLimits(),
    *,
    title: str = "ProgEmu: what-if chest radiographs",
    keep_minutes: float = 60.0,
) -> "gr.Blocks":
    """Build the page around ``pipeline`` (not launched; see :func:`launch`).

    ``examples``: priors offered in a drop-down; ``limits``: upload / dimension / sample / queue
    limits; ``keep_minutes``: age after which cached uploads and results are deleted even if
    the session is still open.
    """
    import gradio as gr

    examples = unique_names(list(examples))
    by_name = {example.name: example for example in examples}
    sessions = _SessionFiles()
    keep_seconds = max(60, int(keep_minutes * 60))
    color_map = {str(i + 1): phrase_color(i) for i in range(_MAX_PHRASE_LABELS)}
    pass_progress = _accepts_progress(pipeline)
    # guidance the model was evaluated with (saved with its weights), else Emu3's 3; other settings stay the model's
    default_cfg = float((getattr(pipeline, "model_sampling", None) or {}).get("cfg_scale", 3.0))

    def resolve_prior(file_path: str | None, example_name: str | None, request: Any) -> tuple[np.ndarray, str]:
        if file_path:
            sessions.add(_session_key(request), file_path)
            return load_prior(file_path, limits), "upload"
        if example_name:
            if example_name not in by_name:
                raise PriorError(f"Unknown example '{example_name}'; pick one from the list.")
            example = by_name[example_name]
            return load_prior(example.path, limits, name=example.name), "example"
        raise PriorError("No prior yet: upload a chest radiograph (PNG, JPG or DICOM) or pick an example.")

    def check_prior(file_path: str | None, request: gr.Request):
        """Preview an uploaded prior, or say why it cannot be used."""
        if not file_path:
            return None, ""
        try:
            image, _ = resolve_prior(file_path, None, request)
        except PriorError as error:
            return None, f"**Cannot use this file.** {error}"
        height, width = image.shape
        return _preview(image), f"Prior loaded ({width} x {height} px)."

    def pick_example(example_name: str | None, request: gr.Request):
        """Use a bundled example: preview it, fill in its hypothesis, forget any upload."""
        if not example_name:
            return None, "", gr.update(), None
        try:
            image, _ = resolve_prior(None, example_name, request)
        except PriorError as error:
            return None, f"**Cannot use this example.** {error}", gr.update(), None
        prompt = by_name[example_name].prompt
        height, width = image.shape
        return _preview(image), f"Example loaded ({width} x {height} px).", (prompt if prompt else gr.update()), None

    def generate(
        file_path: str | None,
        example_name: str | None,
        prompt: str | None,
        samples: float | None,
        cfg_scale: float | None,
        seed: float | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(track_tqdm=True),
    ):
        """Generate counterfactual(s) + interpretation for one prior and hypothesis."""
        try:
            prior, origin = resolve_prior(file_path, example_name, request)
        except PriorError as error:
            raise gr.Error(str(error), print_exception=False) from None
        prompt = (prompt or "").strip()
        if not prompt:
            raise gr.Error("Type a hypothesis (for example 'New small left pleural effusion.') or compose one from the choices.", print_exception=False)
        if len(prompt) > limits.max_prompt_chars:
            raise gr.Error(f"The hypothesis has {len(prompt)} characters; the limit is {limits.max_prompt_chars}. Shorten it to one finding and its change.", print_exception=False)
        samples = int(samples or 1)
        if not 1 <= samples <= limits.max_samples:
            raise gr.Error(f"Samples must be between 1 and {limits.max_samples} (got {samples}).", print_exception=False)
        cfg_scale = float(default_cfg if cfg_scale is None else cfg_scale)
        if not 0.0 <= cfg_scale <= 20.0:
            raise gr.Error(f"Guidance scale must be between 0 and 20 (got {cfg_scale:g}).", print_exception=False)
        seed = int(seed or 0)

        progress(0.0, desc="queued for the model")
        kwargs: dict[str, Any] = {"samples": samples, "cfg_scale": cfg_scale, "seed": seed}
        if pass_progress:
            kwargs["progress"] = _progress_adapter(progress)
        started = time.perf_counter()
        result = pipeline(prior, prompt, **kwargs)
        seconds = time.perf_counter() - started
        # Counts and timings only: the prompt, the interpretation and the file name stay out of logs.
        log.info("generated %d sample(s) from a %s prior in %.2f s", samples, origin, seconds)
        progress(1.0, desc="rendering")
        return _render(prior, prompt, result, samples, seconds, request)

    def _render(prior: np.ndarray, prompt: str, result: Any, samples: int, seconds: float, request: Any):
        counterfactuals = [np.asarray(image, dtype=np.float32) for image in result.counterfactuals]
        if not counterfactuals:
            raise gr.Error("The model returned no counterfactual; try another seed.", print_exception=False)
        grid = _display_shape(counterfactuals[0].shape)
        counterfactuals = [np.clip(resize_grey(image, grid), 0.0, 1.0) for image in counterfactuals]
        first = counterfactuals[0]
        shown_prior = np.clip(resize_grey(prior, grid), 0.0, 1.0)
        difference = getattr(result, "difference", None)
        difference = first - shown_prior if difference is None else resize_grey(difference, grid)
        difference_rgb, difference_scale = colorize_difference(difference)
        phrases = [str(p) for p in (getattr(result, "phrases", None) or [])]
        attention = dict(getattr(result, "attention", None) or {})
        interpretation = str(getattr(result, "interpretation", "") or "")
        spans = phrase_spans(interpretation, phrases) if interpretation else []
        spread = getattr(result, "spread", None)
        show_spread = len(counterfactuals) > 1 and spread is not None
        spread_rgb, spread_scale = colorize_spread(resize_grey(spread, grid)) if show_spread else (None, None)
        attention_rgb = _attention_view(first, phrases, attention, 0)

        session = _session_key(request)
        run_dir = Path(demo.GRADIO_CACHE) / "progemu-serve" / session / uuid.uuid4().hex[:12]
        sessions.add(session, run_dir)
        pictures = {"comparison-prior": grey_to_rgb(shown_prior), "difference": difference_rgb}
        for index, phrase in enumerate(phrases):
            if phrase in attention:
                pictures[f"attention-{index + 1}"] = overlay_attention(first, attention[phrase], phrase_color(index))
        if show_spread:
            pictures["spread"] = spread_rgb
        pipeline_dir = None
        if hasattr(result, "save"):
            pipeline_dir = run_dir / "result"
            result.save(pipeline_dir)
        summary = {
            "disclaimer": "Counterfactuals are model outputs for teaching and research, not diagnoses.",
            "prompt": prompt,
            "interpretation": interpretation,
            "phrases": phrases,
            "samples": len(counterfactuals),
            "settings": getattr(result, "settings", None),
            "timings": getattr(result, "timings", None),
            "seconds": round(seconds, 3),
            "difference_scale": difference_scale,
            "spread_scale": spread_scale,
        }
        bundle = write_bundle(run_dir / "progemu-counterfactual.zip", prior=prior, pipeline_dir=pipeline_dir, pictures=pictures, summary=summary)

        gallery = [(grey_to_rgb(image), f"sample {k + 1}") for k, image in enumerate(counterfactuals)]
        choices = [(f"{k + 1}. {_shorten(phrase)}", str(k + 1)) for k, phrase in enumerate(phrases)]
        state = {"counterfactual": first, "phrases": phrases, "attention": attention}
        status = (
            f"Done in {seconds:.1f} s: {len(counterfactuals)} sample(s). Difference colour scale ±{difference_scale:.3f}"
            + (f"; spread scale 0-{spread_scale:.3f}" if show_spread else "")
            + ". Remember: a counterfactual is not a diagnosis."
        )
        return (
            (_enlarge(grey_to_rgb(shown_prior)), _enlarge(grey_to_rgb(first))),
            _enlarge(difference_rgb),
            spans,
            gr.update(choices=choices, value=choices[0][1] if choices else None),
            _enlarge(attention_rgb),
            gr.update(value=[(_enlarge(image), caption) for image, caption in gallery], visible=len(counterfactuals) > 1),
            gr.update(value=_enlarge(spread_rgb), visible=show_spread),
            str(bundle),
            status,
            state,
        )

    def select_phrase(state: dict | None, event: gr.SelectData):
        """Clicking a highlighted phrase selects it in the phrase list (which redraws the overlay)."""
        value = event.value
        label = None
        if isinstance(value, (list, tuple)) and len(value) >= 2:
            label = value[1]
        elif isinstance(value, dict):
            label = value.get("class_or_confidence") or value.get("label")
        if not state or label is None:
            return gr.update()
        return str(label)

    def show_attention(choice: str | None, state: dict | None):
        if not state or not choice:
            return None
        return _enlarge(_attention_view(state["counterfactual"], state["phrases"], state["attention"], int(choice) - 1))

    def end_session(request: gr.Request):
        removed = sessions.cleanup(_session_key(request))
        log.debug("session ended; removed %d cached file(s)", removed)

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(max(60, keep_seconds // 4), keep_seconds)) as demo:
        gr.Markdown(f"# {title}\nUpload a prior radiograph, state a hypothesis, and see what the model imagines the follow-up would look like — and why.")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Row():
            with gr.Column(scale=1):
                prior_file = gr.File(label="Prior radiograph (PNG, JPG or DICOM)", type="filepath", elem_id="prior-file")
                example = gr.Dropdown(
                    choices=[example.name for example in examples], value=None, label="… or a bundled example",
                    elem_id="example", visible=bool(examples), interactive=True,
                )
                prior_status = gr.Markdown(elem_id="prior-status")
                prior_view = gr.Image(label="Prior", interactive=False, type="numpy", format="png", height=320, elem_id="prior-view")
            with gr.Column(scale=1):
                prompt = gr.Textbox(
                    label="Hypothesis (what changes by the follow-up)", placeholder="New small left pleural effusion.",
                    lines=2, max_length=limits.max_prompt_chars, elem_id="prompt",
                )
                with gr.Accordion("Compose the hypothesis from choices", open=False):
                    finding = gr.Dropdown(list(FINDINGS), value=FINDINGS[0], label="Finding", elem_id="finding")
                    side = gr.Radio(list(SIDES), value="left", label="Side (the patient's)", elem_id="side")
                    change = gr.Radio(list(CHANGES), value="new", label="Change since the prior", elem_id="change")
                    compose = gr.Button("Use this hypothesis", elem_id="compose")
                with gr.Accordion("Settings", open=False):
                    samples = gr.Slider(1, limits.max_samples, value=1, step=1, label="Samples (2 or more show the spread map)", elem_id="samples")
                    cfg_scale = gr.Slider(1.0, 10.0, value=default_cfg, step=0.5, label="Guidance scale (how strongly to follow the hypothesis)", elem_id="cfg")
                    seed = gr.Number(value=0, precision=0, label="Seed (same seed, same result)", elem_id="seed")
                run = gr.Button("Generate counterfactual", variant="primary", elem_id="generate")
        result_status = gr.Markdown(elem_id="result-status")
        with gr.Row():
            comparison = gr.ImageSlider(label="Prior ◀ ▶ counterfactual (drag the slider)", type="numpy", format="png", interactive=False, elem_id="comparison")
            difference = gr.Image(label="Difference: red brighter, blue darker than the prior", type="numpy", format="png", interactive=False, elem_id="difference")
        with gr.Row():
            with gr.Column():
                interpretation = gr.HighlightedText(
                    label="Interpretation (click a phrase to see where it looked)", color_map=color_map,
                    show_legend=False, show_inline_category=False, elem_id="interpretation",
                )
                phrase = gr.Radio(choices=[], label="Phrase shown in the attention map", elem_id="phrase")
            attention_view = gr.Image(label="Attention of the selected phrase on the counterfactual", type="numpy", format="png", interactive=False, elem_id="attention")
        with gr.Row():
            gallery = gr.Gallery(label="All samples", format="png", visible=False, elem_id="samples-gallery")
            spread = gr.Image(label="Spread across samples (yellow = samples disagree)", type="numpy", format="png", interactive=False, visible=False, elem_id="spread")
        download = gr.File(label="Download everything (PNGs + JSON)", interactive=False, elem_id="download")
        state = gr.State(None)

        prior_file.upload(check_prior, [prior_file], [prior_view, prior_status], api_name="check_prior", concurrency_limit=4)
        prior_file.upload(lambda: None, None, [example], api_visibility="private", concurrency_limit=4)
        prior_file.clear(lambda: (None, ""), None, [prior_view, prior_status], api_visibility="private")
        example.input(pick_example, [example], [prior_view, prior_status, prompt, prior_file], api_name="pick_example",
                      api_visibility="undocumented", concurrency_limit=4)
        compose.click(compose_prompt, [finding, side, change], [prompt], api_name="compose", concurrency_limit=4)
        run.click(
            generate, [prior_file, example, prompt, samples, cfg_scale, seed],
            [comparison, difference, interpretation, phrase, attention_view, gallery, spread, download, result_status, state],
            api_name="generate",
        )
        interpretation.select(select_phrase, [state], [phrase], api_visibility="private", concurrency_limit=4)
        phrase.change(show_attention, [phrase, state], [attention_view], api_visibility="private", concurrency_limit=4)
        demo.unload(end_session)

    # One generation at a time: the model is one object on one device. Others wait in the queue
    # and see their position; past queue_size the page says the queue is full.
    demo.queue(default_concurrency_limit=1, max_size=limits.queue_size)
    demo.progemu_limits = limits  # read by launch() for the upload limit
    return demo


def _shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _attention_view(counterfactual: np.ndarray, phrases: list[str], attention: dict, index: int) -> np.ndarray | None:
    if not phrases or not 0 <= index < len(phrases):
        return grey_to_rgb(counterfactual) if counterfactual is not None else None
    weights = attention.get(phrases[index])
    if weights is None:
        return grey_to_rgb(counterfactual)
    return overlay_attention(counterfactual, weights, phrase_color(index))


def launch_options(limits: ServeLimits, *, host: str = "127.0.0.1", port: int | None = 7860) -> dict[str, Any]:
    """Keyword arguments for ``gr.Blocks.launch`` that keep the page private and offline."""
    return {
        "server_name": host,
        "server_port": port,
        "share": False,  # a share link would tunnel patient images through gradio.live
        "max_file_size": limits.max_upload_bytes,
        "show_error": True,
        "ssr_mode": False,  # client-side rendering needs no Node server
        "run_history": False,  # run history would keep inputs in the browser or a Hub bucket
        "footer_links": ["api"],
        "enable_monitoring": False,
        "mcp_server": False,
        "pwa": False,
        "inbrowser": False,
    }


def launch(demo: "gr.Blocks", *, host: str = "127.0.0.1", port: int | None = 7860, quiet: bool = False) -> str:
    """Start the server in a background thread; returns its local URL. Stop it with ``demo.close()``."""
    limits = getattr(demo, "progemu_limits", ServeLimits())
    if host not in {"127.0.0.1", "localhost", "::1"}:
        log.warning("serving on %s: anyone who can reach this address can use the page; put it behind a login or VPN", host)
    _, local_url, _ = demo.launch(prevent_thread_lock=True, quiet=quiet, **launch_options(limits, host=host, port=port))
    return local_url
