"""``table.md`` (Table-1 style) and ``report.html`` (metrics table first, then figures).

The HTML report shows prompts and interpretations of a few test pairs (that is its
purpose); it is a file for the user, not a log, and is written next to the
credentialed data's own outputs.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from progemu.utils.atomic import atomic_write_text

__all__ = ["markdown_table", "write_report"]

log = logging.getLogger(__name__)

_ARROWS = {"FID": "↓", "CLIP-I": "↑", "CLIP-I-followup": "↑", "AUROC": "↑", "F1": "↑",
           "BLEU-3": "↑", "METEOR": "↑", "ROUGE-L": "↑", "METEOR-nltk": "↑", "ROUGE-L-hf": "↑"}
#: columns that only a second text backend fills (``--text-backend both``)
_EXTRA_TEXT_KEYS = ("METEOR-nltk", "ROUGE-L-hf")
_DIGITS = {"FID": 2, "CLIP-I": 2, "CLIP-I-followup": 2}
_ROW_NAMES = {"progemu": "ProgEmu", "progemu2": "ProgEmu² (cascade)", "copy-prior": "copy-prior image + retrieved interpretation (reference)",
              "reconstructed-prior": "reconstructed prior (tokenizer round trip) + retrieved interpretation (reference)",
              "oracle": "oracle: real follow-up (reference)"}


def _format(key: str, value) -> str:
    if value is None:
        return "–"
    return f"{value:.{_DIGITS.get(key, 4)}f}"


def markdown_table(metrics: dict) -> str:
    """Table 1 of the paper, one line per row, plus changed-findings and fidelity columns."""
    from .runner import METRIC_KEYS

    keys = [*METRIC_KEYS, *[k for k in _EXTRA_TEXT_KEYS if any(k in row for row in metrics["rows"].values())]]
    header = ["method", *[f"{k}{_ARROWS[k]}" for k in keys], "AUROC (changed)↑", "F1 (changed)↑", "fidelity↑",
              "unchanged stable", "NCC prior↑"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in metrics["rows"].items():
        changed = metrics.get("changed_findings", {}).get(name, {})
        cells = [_ROW_NAMES.get(name, name), *[_format(k, row.get(k)) for k in keys],
                 _format("AUROC", changed.get("AUROC")), _format("F1", changed.get("F1")),
                 _format("fidelity", metrics.get("fidelity", {}).get(name)),
                 _format("stable", (metrics.get("fidelity_detail", {}).get(name, {}).get("direct") or {}).get("unchanged_stable")),
                 _format("NCC", row.get("NCC-prior"))]
        lines.append("| " + " | ".join(cells) + " |")
    evaluators = metrics.get("evaluators", {})
    methods = {d.get("method") for d in metrics.get("fidelity_detail", {}).values()}
    lines += ["", f"{metrics['n_pairs']} pairs of split `{metrics.get('split')}`; evaluators: "
              f"{evaluators.get('classifier', '?')} / {evaluators.get('clip', '?')}. '–' = does not apply. "
              f"Fidelity measured by: {', '.join(sorted(m for m in methods if m)) or '–'} "
              f"({_fidelity_coverage(metrics)}); 'unchanged stable' = share of "
              "findings whose true state did not change that the counterfactual left unchanged (direct measurement "
              "only). Definitions in metrics.json (`definitions`).", "", _text_footnote(metrics.get("text_backend")),
              *_averaging_table(metrics)]
    return "\n".join(lines) + "\n"


def _text_footnote(backend: dict | None) -> str:
    """Which implementation made BLEU-3 / METEOR / ROUGE-L, with package versions (METEOR differs ~2x between them)."""
    if not backend:
        return "Text metrics: pycocoevalcap (backend not recorded)."
    versions = ", ".join(f"{k} {v}" for k, v in (backend.get("versions") or {}).items() if v)
    parts = [f"{key}: {backend[key]}" for key in ("METEOR", "ROUGE-L", "METEOR-nltk", "ROUGE-L-hf") if backend.get(key)]
    return f"Text metrics (backend `{backend.get('backend')}`): {'; '.join(parts)}. Versions: {versions or '?'}."


def _averaging_table(metrics: dict) -> list[str]:
    """AUROC / F1 under each averaging; Table 1's columns above are the macro ones."""
    from .classification import AVERAGES

    classification = metrics.get("classification") or {}
    if not classification:
        return []
    threshold = next(iter(classification.values())).get("threshold", 0.5)
    lines = ["", f"AUROC / F1 by averaging (F1 at threshold {threshold}; macro = the columns above: unweighted mean over "
             "the labels with both classes; micro = all (pair, label) entries pooled; weighted = labels weighted by "
             "their positives):", "",
             "| method | " + " | ".join(f"AUROC {a} | F1 {a}" for a in AVERAGES) + " |", "|" + "---|" * (1 + 2 * len(AVERAGES))]
    for name, entry in classification.items():
        cells = [f"{_format('AUROC', entry[a].get('AUROC'))} | {_format('F1', entry[a].get('F1'))}" for a in AVERAGES]
        lines.append(f"| {_ROW_NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    return lines


def _fidelity_coverage(metrics: dict) -> str:
    """How many pairs / changes each row's fidelity number covers, e.g. ``ProgEmu: direct, 73 of 73 pairs, 120 changes``."""
    parts = []
    for name, detail in metrics.get("fidelity_detail", {}).items():
        method = detail.get("method")
        measured = detail.get(method) or {}
        if method == "direct":
            covered = f"{measured.get('pairs_matched', '?')} of {measured.get('pairs_total', metrics.get('n_pairs', '?'))} pairs"
        else:
            covered = f"{metrics.get('n_pairs', '?')} pairs"
        parts.append(f"{_ROW_NAMES.get(name, name).split(' (')[0]}: {method}, {covered}, {measured.get('n', 0)} changes")
    return "; ".join(parts) or "no rows"


def _per_finding_html(metrics: dict) -> str:
    from progemu.data.labels import CHEXPERT_LABELS

    rows = list(metrics.get("per_finding", {}))
    head = "".join(f"<th>{html.escape(_ROW_NAMES.get(r, r))} AUROC / F1</th>" for r in rows)
    body = []
    for label in CHEXPERT_LABELS:
        cells = []
        for r in rows:
            entry = metrics["per_finding"][r].get(label, {})
            cells.append(f"<td>{_format('AUROC', entry.get('AUROC'))} / {_format('F1', entry.get('F1'))} "
                         f"<small>(n={entry.get('n', 0)})</small></td>")
        body.append(f"<tr><td>{html.escape(label)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>finding</th>{head}</tr>{''.join(body)}</table>"


def _coloured_interpretation(text: str, phrases: Sequence[str]) -> str:
    from .figures import PHRASE_COLOURS

    out = html.escape(text or "")
    for index, phrase in enumerate(phrases[: len(PHRASE_COLOURS)]):
        colour = "rgb(%d,%d,%d)" % PHRASE_COLOURS[index]
        escaped = html.escape(phrase)
        if escaped and escaped in out:
            out = out.replace(escaped, f'<span style="color:{colour};font-weight:bold">{escaped}</span>', 1)
    return out


def write_report(out: str | Path, metrics: dict, pairs: Sequence, rows: dict, *, size: int, figure_pairs: int = 4,
                 boxes: Sequence | None = None) -> Path:
    """Write ``table.md``, ``figures/*.png`` and ``report.html`` under ``out``; returns the HTML path.

    ``boxes[i]``: optional normalised zoom region of pair ``i`` for the Fig. 3 style figure.
    """
    from .figures import attention_figure, comparison_figure
    from .images import load_image, resize

    out = Path(out)
    table = markdown_table(metrics)
    atomic_write_text(out / "table.md", table)
    figures = out / "figures"
    chosen = list(range(min(figure_pairs, len(pairs))))
    # every method's counterfactuals are shown (ProgEmu, ProgEmu², baselines, external outputs), not the references
    model_rows = [name for name in rows if name not in ("copy-prior", "reconstructed-prior", "oracle")]
    cases = []
    for i in chosen:
        pair = pairs[i]
        cases.append({"title": f"{pair.pair_id}", "prior": resize(load_image(pair.prior_image), size),
                      "followup": resize(load_image(pair.followup_image), size),
                      "rows": {name: resize(np.asarray(rows[name].images[i], np.float32), size) for name in model_rows},
                      "box": boxes[i] if boxes is not None and i < len(boxes) else None})
    sections = []
    if cases:
        comparison_figure(cases, figures / "fig3_comparison.png")
        prompts = "".join(f"<li><code>{html.escape(pairs[i].pair_id)}</code>: {html.escape(pairs[i].prompt)}</li>"
                          for i in chosen)
        sections.append("<h2>Counterfactuals (Fig. 3 style)</h2><p>Prior, real follow-up and each model's "
                        "counterfactual; below, zoomed on the region that changed most (yellow box). Prompts:</p>"
                        f"<ol>{prompts}</ol><img src='figures/fig3_comparison.png' alt='Fig. 3 style comparison'>")
    interpretation_blocks = []
    for name in model_rows:
        generations = rows[name].generations or {}
        for i in chosen:
            generation = generations.get(pairs[i].pair_id)
            if generation is None or not generation.interpretation:  # image-only methods have no interpretation
                continue
            figure_html = ""
            if generation.attention:
                file = f"fig4_{name}_{i}.png"
                attention_figure(generation.counterfactuals[0], generation.phrases, generation.attention, figures / file)
                figure_html = f"<img src='figures/{file}' alt='attention maps'>"
            interpretation_blocks.append(
                f"<h3>{html.escape(_ROW_NAMES.get(name, name))}: <code>{html.escape(pairs[i].pair_id)}</code></h3>"
                f"<p><b>Prompt:</b> {html.escape(pairs[i].prompt)}</p>"
                f"<p><b>Interpretation:</b> {_coloured_interpretation(generation.interpretation, generation.phrases)}</p>"
                f"<p><b>Reference:</b> {html.escape(pairs[i].interpretation)}</p>{figure_html}")
    if interpretation_blocks:
        sections.append("<h2>Interpretations and attention (Fig. 4 style)</h2>" + "".join(interpretation_blocks))
    table_html = _markdown_to_html(table)
    body = (f"<h1>progemu evaluation</h1><h2>Table 1</h2>{table_html}"
            + "".join(sections)
            + f"<h2>Per finding</h2>{_per_finding_html(metrics)}")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>progemu evaluation</title><style>"
            "body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style></head>"
            f"<body>{body}</body></html>\n")
    return atomic_write_text(out / "report.html", page)


def _markdown_to_html(table: str) -> str:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    rows = [[html.escape(c.strip()) for c in line.strip("|").split("|")] for line in lines if not line.startswith("|---")]
    notes = [html.escape(line) for line in table.splitlines() if line and not line.startswith("|")]
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table><p>{' '.join(notes)}</p>"
