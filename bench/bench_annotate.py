"""Benchmark of the two annotators of ``progemu curate``.

Rules annotator: throughput (pairs/s, one thread) and accuracy on synthetic-world report pairs
against the world's true state changes, and throughput / understood-sentence fraction /
confidence histogram on real Open-i reports (consecutive reports paired; they are not real
longitudinal pairs, so only robustness is measured there).

LLM annotator: against the loopback fake server of ``tests/fake_llm_server.py`` with a fixed
per-request latency: wall time at concurrency 1 vs N (reference measured in the same run), a
re-run from the cache (must make zero requests), and a run where 10 % of answers are 429 and
10 % malformed (all pairs must still succeed).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_annotate.py [--patients 500] [--latency 0.05]
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from annotate_fixtures import matches, synth_pairs  # noqa: E402
from fake_llm_server import FakeLLMServer  # noqa: E402

from progemu.curate.annotate_rules import RulesAnnotator  # noqa: E402
from progemu.curate.annotation import ReportText, make_annotator  # noqa: E402
from progemu.curate.mentions import parse_report  # noqa: E402


def bench_rules_synth(patients: int) -> dict:
    pairs = synth_pairs(patients, seed=2026)
    annotator = RulesAnnotator()
    items = [(ReportText(p.prior_findings, p.prior_impression), ReportText(p.followup_findings, p.followup_impression)) for p in pairs]
    start = time.perf_counter()
    annotations = [annotator.annotate(prior, followup, f"s{i}") for i, (prior, followup) in enumerate(items)]
    seconds = time.perf_counter() - start
    counts = collections.Counter()
    for pair, (prior, followup) in zip(pairs, items):
        analysis = annotator.analyse(prior, followup)
        for truth in pair.changes:
            group = "changed" if truth.kind != "unchanged" else ("unchanged device" if truth.device else "unchanged")
            counts[group + " total"] += 1
            counts[group + " in prompt"] += any(matches(truth, c) for c in analysis.prompt_changes)
            counts[group + " in interpretation"] += any(matches(truth, c) for c in analysis.interpretation_changes)
        counts["invented changes"] += sum(1 for c in analysis.prompt_changes
                                          if c.kind != "unchanged" and not any(matches(t, c) for t in pair.changes))
    return {"pairs": len(pairs), "seconds": seconds, "pairs_per_s": len(pairs) / seconds, "counts": counts,
            "confidence": collections.Counter(a.confidence for a in annotations)}


def bench_rules_openi() -> dict | None:
    spec = importlib.util.find_spec("torchxrayvision")
    archive = Path(spec.origin).parent / "data" / "NLMCXR_reports.tgz" if spec and spec.origin else None
    if archive is None or not archive.exists():
        return None
    reports = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile():
                root = ET.fromstring(tar.extractfile(member).read())
                sections = {node.get("Label"): node.text or "" for node in root.iter("AbstractText")}
                reports.append(ReportText(sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")))
    annotator = RulesAnnotator()
    start = time.perf_counter()
    annotations = [annotator.annotate(reports[i], reports[i + 1], f"o{i}") for i in range(len(reports) - 1)]
    seconds = time.perf_counter() - start
    understood = total = 0
    for report in reports:
        for text in (report.findings, report.impression):
            parsed = parse_report(text)
            understood, total = understood + parsed.n_understood, total + len(parsed.sentences)
    return {"reports": len(reports), "pairs": len(annotations), "seconds": seconds, "pairs_per_s": len(annotations) / seconds,
            "understood": understood / total, "confidence": collections.Counter(a.confidence for a in annotations)}


def bench_llm(n_pairs: int, latency: float, concurrency: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    os.environ.setdefault("PROGEMU_BENCH_KEY", "bench-key")
    pairs = [(ReportText(f"Small left pleural effusion {i}.", f"Effusion {i}."), ReportText(f"Moderate left pleural effusion {i}.", f"Larger effusion {i}."))
             for i in range(n_pairs)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp, FakeLLMServer(default="slow", slow_s=latency) as server:
        def run(conc: int, cache: str | None):
            annotator = make_annotator("llm", base_url=server.base_url, model="bench", api_key_env="PROGEMU_BENCH_KEY",
                                       concurrency=conc, cache_dir=cache, backoff_base_s=0.01, backoff_max_s=0.05)
            before = server.calls
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=max(conc, 1) * 2) as pool:
                list(pool.map(lambda item: annotator.annotate(item[1][0], item[1][1], f"r{item[0]}"), enumerate(pairs)))
            return time.perf_counter() - start, server.calls - before

        results["serial"] = run(1, None)
        results["concurrent"] = run(concurrency, str(Path(tmp) / "cache"))
        results["cached"] = run(concurrency, str(Path(tmp) / "cache"))
    script = []
    for i in range(n_pairs):
        script.append("ratelimit" if i % 10 == 3 else "malformed" if i % 10 == 7 else "good")
    with FakeLLMServer(script, default="good", retry_after=0.02) as server:
        annotator = make_annotator("llm", base_url=server.base_url, model="bench", api_key_env="PROGEMU_BENCH_KEY",
                                   concurrency=concurrency, backoff_base_s=0.01, backoff_max_s=0.05)
        ok = sum(1 for i, (p, f) in enumerate(pairs) if annotator.annotate(p, f, f"f{i}").confidence)
        results["faulty"] = (ok, server.calls)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--llm-pairs", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="fake server seconds per request")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    synth = bench_rules_synth(args.patients)
    c = synth["counts"]
    print(f"rules / synthetic world ({args.patients} patients): {synth['pairs']} pairs in {synth['seconds']:.2f} s "
          f"= {synth['pairs_per_s']:.0f} pairs/s")
    for group in ("changed", "unchanged", "unchanged device"):
        total = c[group + " total"]
        if total:
            print(f"  {group:16s}: in prompt {c[group + ' in prompt']}/{total} = {c[group + ' in prompt'] / total:.3f}; "
                  f"in interpretation {c[group + ' in interpretation'] / total:.3f}")
    print(f"  invented changes in prompts: {c['invented changes']}; confidence histogram {dict(sorted(synth['confidence'].items()))}")
    openi = bench_rules_openi()
    if openi:
        print(f"rules / Open-i: {openi['pairs']} pairs of {openi['reports']} real reports in {openi['seconds']:.2f} s = "
              f"{openi['pairs_per_s']:.0f} pairs/s; sentences understood {openi['understood']:.3f}; "
              f"confidence histogram {dict(sorted(openi['confidence'].items()))}")
    llm = bench_llm(args.llm_pairs, args.latency, args.concurrency)
    serial, concurrent_, cached = llm["serial"], llm["concurrent"], llm["cached"]
    print(f"llm / fake server, {args.llm_pairs} pairs, {args.latency * 1000:.0f} ms per request:")
    print(f"  concurrency 1: {serial[0]:.2f} s ({serial[1]} requests); concurrency {args.concurrency}: {concurrent_[0]:.2f} s "
          f"({concurrent_[1]} requests); speed-up {serial[0] / concurrent_[0]:.2f}x")
    print(f"  re-run from cache: {cached[0]:.3f} s, {cached[1]} requests ({serial[0] / max(cached[0], 1e-9):.0f}x faster than serial)")
    ok, calls = llm["faulty"]
    print(f"  10% 429 + 10% malformed answers: {ok}/{args.llm_pairs} pairs annotated with {calls} requests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
