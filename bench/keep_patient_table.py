"""One table for "does the counterfactual keep the patient?": evaluation rows + real-prior NCC side by side.

Each ``--row`` names a configuration and the files that measured it::

    --row "LABEL=EVAL_DIR/metrics.json:ROW[,REAL_DIR/real_priors.json]"

``ROW`` is a row of that ``metrics.json`` (``progemu``, ``copy-prior``, ``reconstructed-prior``,
``oracle``); the optional ``real_priors.json`` comes from ``bench/bench_real_priors.py``.

    python bench/keep_patient_table.py --out bench/results/keep_patient.md \\
        --row "plain=runs/a/eval/metrics.json:progemu,runs/a/real/real_priors.json" ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = ("FID", "CLIP-I", "CLIP-I-followup", "AUROC", "F1", "BLEU-3", "METEOR", "ROUGE-L")


def _cell(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def row_cells(metrics: dict, row: str, real: dict | None) -> list[str]:
    values = metrics["rows"][row]
    changed = metrics.get("changed_findings", {}).get(row, {})
    direct = (metrics.get("fidelity_detail", {}).get(row, {}) or {}).get("direct") or {}
    cells = [_cell(values.get(k), 2 if k.startswith(("FID", "CLIP")) else 3) for k in COLUMNS]
    cells += [_cell(direct.get("unchanged_stable")), _cell(changed.get("AUROC")), _cell(metrics.get("fidelity", {}).get(row)),
              _cell(values.get("NCC-prior"))]
    if real is None:
        cells += ["–", "–", "–"]
    else:
        cells += [_cell(real.get("mean_ncc_prior_counterfactual")), _cell(real.get("effusion_mean_rise_sd")),
                  _cell(real.get("effusion_mean_ncc_elsewhere"))]
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", action="append", required=True, help="LABEL=metrics.json:ROW[,real_priors.json]")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    header = ["configuration", *COLUMNS, "unchanged stable", "AUROC (changed)", "fidelity", "NCC prior (world)",
              "NCC prior (10 real)", "effusion rise (sd, real)", "NCC elsewhere (real)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for spec in args.row:
        label, rest = spec.split("=", 1)
        metrics_part, _, real_path = rest.partition(",")
        metrics_path, _, row = metrics_part.rpartition(":")
        metrics = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
        real = json.loads(Path(real_path).read_text(encoding="utf-8")) if real_path else None
        lines.append("| " + " | ".join([label, *row_cells(metrics, row, real)]) + " |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
