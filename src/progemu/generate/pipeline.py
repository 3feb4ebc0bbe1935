"""The user-facing generator: prior radiograph + prompt -> counterfactual + interpretation (+ maps).

``ProgEmuPipeline`` wraps one checkpoint (joint ProgEmu, or an image-only model);
``CascadePipeline`` chains an image-only and a text-only checkpoint (the paper's ProgEmu²: the
text model reads prior + prompt + the generated counterfactual). Both return
:class:`GenerationResult` objects whose :meth:`GenerationResult.save` writes the output contract
of ``progemu generate --out DIR``::

    counterfactual.png            (counterfactual_K.png, K = 0..N-1, when N samples were drawn)
    interpretation.txt            the interpretation of sample 0
    difference.png                mean counterfactual - prior, mapped to [0, 1] (0.5 = no change)
    spread.png                    per-pixel standard deviation across samples x 2 (only when N > 1)
    attention/NN_<phrase>.png     one overlay per phrase of the interpretation (sample 0)
    result.json                   prompt, interpretation(s), phrases, maps, settings, seed, timings

Images in and out follow the project convention: ``float32 [H, W]`` in [0, 1]. The prior is
resized (whole, bilinear) to the image tokenizer's native square size for encoding and the
counterfactual is resized back to the prior's ``H x W``, so prior, counterfactual and difference
map share one pixel grid. The prior is assumed registered (ICG-CXR priors are); the difference is
taken pixel by pixel.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from .attention import AttentionSettings, interpretation_attention, phrase_maps, split_phrases, token_char_spans
from .inputs import check_prompt, load_prior, resize_image
from .result import RESULT_SCHEMA, GenerationResult
from .sampler import ConstrainedSampler, SamplingSettings, row_seed

__all__ = ["GenerationResult", "ProgEmuPipeline", "CascadePipeline", "load_prior", "RESULT_SCHEMA"]


# -------------------------------------------------------------------------------------------- pipeline
class ProgEmuPipeline:
    """Counterfactual + interpretation from one ProgEmu checkpoint.

    ``pipe = ProgEmuPipeline.from_pretrained(dir)``; ``result = pipe(prior, prompt, samples=1,
    seed=0, cfg_scale=3.0, temperature=0.7, ...)``. Sampling keywords are the fields of
    :class:`~progemu.generate.sampler.SamplingSettings`; a keyword left out takes the value saved
    with the checkpoint (``progemu.json`` ``"sampling"``, see :mod:`progemu.generate.model_defaults`;
    kept in ``model_sampling``), else the official inference setting (top-k 2048, temperature 1,
    no guidance, 196 interpretation tokens).
    """

    def __init__(self, model: Any, text_tokenizer: Any, layout: Any, image_tokenizer: Any, *, mode: str = "joint",
                 defaults: SamplingSettings | None = None, source: str | None = None):
        if image_tokenizer is None:
            raise ValueError(f"{source or 'checkpoint'}: no image tokenizer; the checkpoint must contain image_tokenizer/ "
                             "(saved by progemu train) to encode priors and decode counterfactuals")
        if tuple(image_tokenizer.grid) != tuple(layout.grid):
            raise ValueError(f"{source or 'checkpoint'}: image tokenizer grid {tuple(image_tokenizer.grid)} differs from the "
                             f"layout grid {tuple(layout.grid)}; the checkpoint's image_tokenizer/ is not the one it was trained with")
        self.model = model.eval()
        self.text_tokenizer = text_tokenizer
        self.layout = layout
        self.image_tokenizer = image_tokenizer
        self.mode = mode
        self.defaults = (defaults or SamplingSettings()).validate()
        self.source = source
        self.model_sampling: dict = {}  # the checkpoint's saved sampling settings (from_pretrained fills it)
        self.sampler = ConstrainedSampler(model, layout)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: Any = None, dtype: Any = None,
                        defaults: SamplingSettings | None = None) -> "ProgEmuPipeline":
        """Load a checkpoint directory written by ``progemu train`` (see :mod:`progemu.model.checkpoint`).

        ``device``: ``"cpu"`` / ``"cuda"``; ``None`` = CUDA when available, else CPU. ``directory``
        ``"demo"``: the packaged demo model. ``defaults``: sampling defaults replacing the ones
        saved with the checkpoint.
        """
        from progemu.model.checkpoint import load_checkpoint

        from .model_defaults import read_sampling_defaults, resolve_model_dir

        directory = resolve_model_dir(directory)
        stored = read_sampling_defaults(directory)
        device = _default_device(device)
        loaded = load_checkpoint(directory, device=device, dtype=dtype)
        pipe = cls(loaded.model, loaded.text_tokenizer, loaded.layout, loaded.image_tokenizer, mode=loaded.mode,
                   defaults=defaults if defaults is not None else SamplingSettings(**stored), source=str(directory))
        pipe.model_sampling = stored
        return pipe

    # ------------------------------------------------------------------------------------- public API
    def __call__(self, prior: Any, prompt: str, *, samples: int = 1, seed: int = 0, attention: bool = True,
                 attention_settings: AttentionSettings | None = None, progress: Callable | None = None,
                 **sampling: Any) -> GenerationResult:
        """One request; ``prior``: path / PIL / array (see :func:`load_prior`). Same seed -> same result.

        ``progress``: optional callback ``progress(done, total, description)`` (e.g. for a web page).
        """
        return self.generate_batch([prior], [prompt], samples=samples, seed=[seed], attention=attention,
                                   attention_settings=attention_settings, progress=progress, **sampling)[0]

    def generate_batch(self, priors: Sequence[Any], prompts: Sequence[str], *, samples: int = 1,
                       seed: int | Sequence[int] = 0, batch_size: int = 8, attention: bool = False,
                       attention_settings: AttentionSettings | None = None, progress: bool | Callable = False,
                       **sampling: Any) -> list[GenerationResult]:
        """Many requests, ``batch_size`` at a time through one batched sampler call each.

        ``seed``: one per request, or an int ``s`` meaning ``s + i`` for request ``i`` (so request
        ``i`` gives the same result as ``pipe(prior_i, prompt_i, seed=s + i)``). ``attention``: also
        compute interpretation maps (one extra forward per request). ``progress``: ``True`` for a
        progress bar over batches, or a callback ``progress(done, total, description)`` per
        sampling step of each batch.
        """
        if self.mode == "text":
            raise ValueError(f"{self.source or 'this checkpoint'} is a text-only model (ProgEmu² second half); "
                             "use CascadePipeline(image_dir, text_dir)")
        if len(priors) != len(prompts):
            raise ValueError(f"generate_batch: {len(priors)} priors but {len(prompts)} prompts")
        seeds = _seeds(seed, len(priors))
        settings = self._settings(sampling)
        results: list[GenerationResult] = []
        chunks = range(0, len(priors), max(1, int(batch_size)))
        try:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="generating", disable=progress is not True, leave=False)
        except ImportError:  # pragma: no cover
            pass
        for start in chunks:
            stop = start + max(1, int(batch_size))
            results += self._generate_chunk(list(priors[start:stop]), list(prompts[start:stop]), seeds[start:stop],
                                            samples, settings, attention, attention_settings,
                                            progress if callable(progress) else None)
        return results

    # ---------------------------------------------------------------------------------------- internals
    def _settings(self, sampling: dict) -> SamplingSettings:
        names = {f.name for f in dataclasses.fields(SamplingSettings)}
        unknown = set(sampling) - names
        if unknown:
            raise ValueError(f"unknown generation settings {sorted(unknown)}; known: {sorted(names)}")
        return dataclasses.replace(self.defaults, **sampling).validate()

    def encode_priors(self, images: list[np.ndarray]) -> np.ndarray:
        """int64 [B, h, w] codes of float [H, W] priors (resized to the tokenizer's native size)."""
        import torch

        from progemu.data.images import model_input

        size = int(self.image_tokenizer.image_size)
        batch = np.stack([model_input(image, size) for image in images])[:, None]
        return self.image_tokenizer.encode(torch.from_numpy(batch)).numpy()

    def decode_codes(self, codes: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """float32 [H, W] images (one per code grid, resized to ``sizes``)."""
        import torch

        if not codes:
            return []
        images = self.image_tokenizer.decode(torch.as_tensor(np.stack(codes))).numpy()[:, 0]
        return [resize_image(image, size) for image, size in zip(images, sizes)]

    def prompt_ids(self, prompt: str) -> list[int]:
        return list(self.text_tokenizer.encode(prompt, add_special_tokens=False))

    def _generate_chunk(self, priors: list, prompts: list, seeds: list[int], samples: int, settings: SamplingSettings,
                        attention: bool, attention_settings: AttentionSettings | None,
                        callback: Callable | None = None) -> list[GenerationResult]:
        clock = time.perf_counter()
        prompts = [check_prompt(p, f"prompt {i}") for i, p in enumerate(prompts)]
        images = [load_prior(p) for p in priors]
        prior_codes = self.encode_priors(images)
        prefixes = [self.layout.prefix(codes, self.prompt_ids(prompt)) for codes, prompt in zip(prior_codes, prompts)]
        encode_s = time.perf_counter() - clock
        prior_only = [self.layout.prefix(codes, []) for codes in prior_codes] if settings.cfg_prompt_scale is not None else None
        out = self.sampler.generate(prefixes, mode=self.mode, samples=samples, seeds=seeds, settings=settings,
                                    progress=callback, anchor_codes=list(prior_codes), prior_prefixes=prior_only)
        parsed = [[self.layout.parse(seq) for seq in request] for request in out.sequences]
        for r, request in enumerate(parsed):
            for k, (codes, _) in enumerate(request):
                if codes is None:  # cannot happen with the constrained sampler; guard against silent garbage
                    raise RuntimeError(f"request {r} sample {k}: the generated image is malformed")
        clock = time.perf_counter()
        flat_codes = [codes for request in parsed for codes, _ in request]
        flat_images = self.decode_codes(flat_codes, [images[r].shape for r in range(len(prompts)) for _ in range(samples)])
        decode_s = time.perf_counter() - clock
        results = []
        for r, prompt in enumerate(prompts):
            texts = [ids for _, ids in parsed[r]]
            counterfactuals = flat_images[r * samples:(r + 1) * samples]
            timings = {"encode_s": encode_s / len(prompts), "prefill_s": out.timings["prefill_s"] / len(prompts),
                       "decode_s": out.timings["decode_s"] / len(prompts), "image_decode_s": decode_s / len(prompts),
                       "batch_requests": len(prompts),
                       "tokens_per_s": out.timings["total_tokens"] / max(out.timings["decode_s"] + out.timings["prefill_s"], 1e-9)}
            results.append(self._result(prompt, images[r], prefixes[r], out.sequences[r], [c for c, _ in parsed[r]], texts,
                                        counterfactuals, seeds[r], samples, settings, timings, attention, attention_settings,
                                        image_in_prefix=False))
        return results

    def _result(self, prompt: str, prior: np.ndarray, prefix: list[int], sequences: list[list[int]], codes: list,
                texts: list[list[int]], counterfactuals: list[np.ndarray], seed: int, samples: int,
                settings: SamplingSettings, timings: dict, attention: bool, attention_settings: AttentionSettings | None,
                *, image_in_prefix: bool, extra_settings: dict | None = None) -> GenerationResult:
        """Assemble one result; ``image_in_prefix``: the counterfactual is the last image of ``prefix`` (cascade)."""
        clock = time.perf_counter()
        interpretations = [self.text_tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in texts]
        attention_settings = attention_settings or AttentionSettings()
        maps: dict[str, np.ndarray] = {}
        masses: dict[str, float] = {}
        phrases: list[str] = [p for p, _, _ in split_phrases(interpretations[0], attention_settings.phrases)] if texts[0] else []
        if attention and texts[0]:
            maps, masses = self._attention(prefix, sequences[0], texts[0], attention_settings, image_in_prefix)
        timings = dict(timings, attention_s=time.perf_counter() - clock)
        stack = np.stack(counterfactuals) if counterfactuals else None
        settings_doc = {"mode": self.mode, "samples": samples, "seed": seed, **dataclasses.asdict(settings),
                        "attention": dataclasses.asdict(attention_settings) if attention else None,
                        "model": self.source, "checkpoint_sampling": dict(self.model_sampling),
                        "image_size": int(self.image_tokenizer.image_size),
                        "grid": list(self.layout.grid), **(extra_settings or {})}
        return GenerationResult(
            prompt=prompt, prior=prior, counterfactuals=counterfactuals, interpretation=interpretations[0],
            interpretations=interpretations, phrases=phrases, attention=maps, attention_mass=masses,
            difference=None if stack is None else (stack.mean(axis=0) - prior).astype(np.float32),
            spread=None if stack is None or len(stack) < 2 else stack.std(axis=0).astype(np.float32),
            codes=[np.asarray(c) for c in codes if c is not None], token_ids=[list(s) for s in sequences],
            settings=settings_doc, seed=int(seed), timings=timings)

    def _attention(self, prefix: list[int], continuation: list[int], text_ids: list[int], settings: AttentionSettings,
                   image_in_prefix: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        layout = self.layout
        h, w = layout.grid
        header = layout.image_header_length
        image_start = len(prefix) - layout.image_length if image_in_prefix else len(prefix)
        text_start = len(prefix) if image_in_prefix else len(prefix) + layout.image_length
        image_positions = [image_start + header + r * (w + 1) + c for r in range(h) for c in range(w)]
        text_positions = [text_start + t for t in range(len(text_ids))]
        sequence = list(prefix) + list(continuation)
        if sequence[text_start:text_start + len(text_ids)] != list(text_ids):
            raise RuntimeError("attention: interpretation ids are not where the layout puts them")
        token_maps = interpretation_attention(self.model, sequence, image_positions, text_positions, settings,
                                              position_ids=layout.position_ids(sequence))
        text, spans = token_char_spans(self.text_tokenizer, text_ids)
        found = phrase_maps(token_maps, spans, split_phrases(text, settings.phrases), (h, w))
        return {k: v["map"] for k, v in found.items()}, {k: v["image_mass"] for k, v in found.items()}


class CascadePipeline:
    """ProgEmu² (the paper's ablation): an image-only model, then a text-only model.

    The image model generates the counterfactual from prior + prompt; the text model reads
    ``BOS IMG(prior) prompt IMG(counterfactual)`` and writes the interpretation. Both checkpoints
    must use the same image tokenizer (codes are passed between them).
    """

    def __init__(self, image_dir: Any, text_dir: Any = None, *, device: Any = None, dtype: Any = None):
        self.image = image_dir if isinstance(image_dir, ProgEmuPipeline) else \
            ProgEmuPipeline.from_pretrained(image_dir, device=device, dtype=dtype)
        self.text = text_dir if isinstance(text_dir, ProgEmuPipeline) else \
            ProgEmuPipeline.from_pretrained(text_dir, device=device, dtype=dtype)
        if self.image.mode != "image":
            raise ValueError(f"{self.image.source}: the cascade's first model must be image-only (mode 'image'), "
                             f"got mode {self.image.mode!r}")
        if self.text.mode != "text":
            raise ValueError(f"{self.text.source}: the cascade's second model must be text-only (mode 'text'), "
                             f"got mode {self.text.mode!r}")
        if self.image.image_tokenizer.identity != self.text.image_tokenizer.identity:
            raise ValueError(f"{self.image.source} and {self.text.source} use different image tokenizers; the text model "
                             "must read codes of the image model's tokenizer (train both with the same --tokenizer)")

    def __call__(self, prior: Any, prompt: str, *, samples: int = 1, seed: int = 0, attention: bool = True,
                 attention_settings: AttentionSettings | None = None, progress: Callable | None = None,
                 **sampling: Any) -> GenerationResult:
        return self.generate_batch([prior], [prompt], samples=samples, seed=[seed], attention=attention,
                                   attention_settings=attention_settings, progress=progress, **sampling)[0]

    def generate_batch(self, priors: Sequence[Any], prompts: Sequence[str], *, samples: int = 1,
                       seed: int | Sequence[int] = 0, batch_size: int = 8, attention: bool = False,
                       attention_settings: AttentionSettings | None = None, progress: bool | Callable = False,
                       **sampling: Any) -> list[GenerationResult]:
        """As :meth:`ProgEmuPipeline.generate_batch`; sample ``k``'s interpretation describes counterfactual ``k``."""
        if len(priors) != len(prompts):
            raise ValueError(f"generate_batch: {len(priors)} priors but {len(prompts)} prompts")
        seeds = _seeds(seed, len(priors))
        first = self.image.generate_batch(priors, prompts, samples=samples, seed=seeds, batch_size=batch_size,
                                          attention=False, progress=progress, **sampling)
        text = self.text
        settings = text._settings(sampling)
        step = max(1, int(batch_size))
        results = []
        for begin in range(0, len(first), step):  # the text half is batched across requests too
            chunk, chunk_seeds = first[begin:begin + step], seeds[begin:begin + step]
            clock = time.perf_counter()
            prior_codes = text.encode_priors([r.prior for r in chunk])
            prefixes, nulls, row_seeds = [], [], []
            for result, codes, prompt_seed in zip(chunk, prior_codes, chunk_seeds):
                prompt_ids = text.prompt_ids(result.prompt)
                prefixes += [text.layout.prefix(codes, prompt_ids, followup_codes=c) for c in result.codes]
                nulls += [text.layout.null_prefix(followup_codes=c) for c in result.codes]
                # one text request per counterfactual, each with the stream of its image sample
                row_seeds += [row_seed(prompt_seed, k) for k in range(samples)]
            out = text.sampler.generate(prefixes, mode="text", samples=1, seeds=row_seeds, settings=settings,
                                        null_prefixes=nulls, progress=progress if callable(progress) else None)
            text_s = time.perf_counter() - clock
            for i, (result, prompt_seed) in enumerate(zip(chunk, chunk_seeds)):
                rows = range(i * samples, (i + 1) * samples)
                sequences = [out.sequences[j][0] for j in rows]
                texts = [text.layout.parse(seq)[1] for seq in sequences]
                timings = {f"image_{k}": v for k, v in result.timings.items()}
                timings.update(text_prefill_s=out.timings["prefill_s"] / len(chunk),
                               text_decode_s=out.timings["decode_s"] / len(chunk), text_total_s=text_s / len(chunk))
                merged = text._result(result.prompt, result.prior, prefixes[rows[0]], sequences, result.codes, texts,
                                      result.counterfactuals, prompt_seed, samples, settings, timings, attention,
                                      attention_settings, image_in_prefix=True,
                                      extra_settings={"cascade": {"image_model": self.image.source, "text_model": text.source}})
                merged.settings["mode"] = "cascade"
                merged.token_ids = [a + b for a, b in zip(result.token_ids, merged.token_ids)]
                results.append(merged)
        return results


def _seeds(seed: int | Sequence[int], count: int) -> list[int]:
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} requests")
    return seeds


def _default_device(device: Any) -> Any:
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
