"""The ``rules`` annotator: offline, deterministic prompts and interpretations from two reports.

Steps (each a pure function, so the annotator is thread-safe):

1. :func:`progemu.curate.mentions.parse_report` turns each section into finding mentions;
2. :func:`section_state` merges the mentions of one section into one state per finding
   (key: label + side, or label + device type), counting contradictions;
3. :func:`diff_states` compares prior and follow-up states into :class:`Change` items. A change
   word in the follow-up report ("new", "has increased", "resolved", "unchanged") wins; without
   one the change is inferred from presence and severity in the two reports;
4. the **prompt** is written from the changes between the two *impressions*, plus the real changes
   only the findings state (devices, which impressions often omit); the **interpretation** from the
   changes between the two *findings* sections, plus those only the impressions state. A section
   silent about a finding defers to the other section of the same report. Wording (one fixed
   template per finding and change, saying where and what it looks like) is in
   :mod:`progemu.curate.progression_text`;
5. the **confidence** (1..5) is ``1 + 4 x`` the fraction of sentences understood, minus penalties
   for contradictions, missing sections and changes inferred from a report's silence.

Identical or near-identical reports (word-sequence similarity >= :data:`NEAR_IDENTICAL`, e.g. a
case-level note copied to both studies) do not describe this interval with the sentences they share:
a change word ("has worsened") in a follow-up sentence that the prior report also holds refers to an
earlier study. For such reports those change words are ignored, so the change is inferred from the
two texts (identical reports give "... is unchanged" / "No significant interval change."), and when
one was ignored the confidence is at most 2 (1 when identical), below curation's default filter.

The paper's annotator is GPT-4 (``--annotator llm``); this one makes the pipeline runnable offline
and on the synthetic world. Given credentialed real reports it logs a warning saying so.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import re

from progemu.curate.annotation import Annotation, ReportText
from progemu.curate.mentions import Mention, ParsedReport, parse_report, severity_rank
from progemu.curate.progression_text import render_interpretation, render_prompt

__all__ = ["RulesAnnotator", "RulesAnalysis", "Change", "FindingState", "RULES_VERSION", "section_state", "diff_states",
           "render_prompt", "render_interpretation", "report_similarity", "NEAR_IDENTICAL"]

RULES_VERSION = "rules-v1"
#: prior / follow-up reports at least this similar (difflib ratio of their word sequences) are one note copied twice
NEAR_IDENTICAL = 0.9
log = logging.getLogger(__name__)
_KIND_ORDER = ("new", "placed", "increased", "decreased", "repositioned", "resolved", "removed", "unchanged")


@dataclasses.dataclass
class FindingState:
    """What one report section says about one finding (merged over its mentions)."""

    finding: str
    side: str | None
    present: bool
    severity: str | None = None
    location: str | None = None
    size_mm: float | None = None
    device: str | None = None
    tip: str | None = None
    change: str | None = None  # explicit change word in this section, if any
    uncertain: bool = False
    order: int = 0  # first mention position, for a stable output order
    noun: str = ""


@dataclasses.dataclass
class Change:
    """One progression item between prior and follow-up. ``kind`` is one of ``_KIND_ORDER``."""

    finding: str
    kind: str
    side: str | None = None
    location: str | None = None
    severity_before: str | None = None
    severity_after: str | None = None
    size_before: float | None = None
    size_after: float | None = None
    device: str | None = None
    tip: str | None = None
    explicit: bool = True  # stated by a change word (not inferred)
    from_silence: bool = False  # inferred although the prior report did not mention the finding
    noun: str = ""
    order: int = 0


def _key(mention: Mention) -> tuple[str, str]:
    if mention.finding == "Support Devices":
        return (mention.finding, mention.device or "support device")
    return (mention.finding, mention.side or "")


def section_state(parsed: ParsedReport) -> tuple[dict[tuple[str, str], FindingState], int]:
    """Merge one section's mentions into ``{(label, side|device): FindingState}``; also return the
    number of contradictions (a finding both asserted and denied, uncertain mentions aside)."""
    states: dict[tuple[str, str], FindingState] = {}
    conflicts = 0
    for order, mention in enumerate(parsed.mentions):
        if mention.finding == "No Finding":
            continue
        key = _key(mention)
        if key[1] == "" and mention.finding != "Support Devices":
            sided = [k for k in states if k[0] == mention.finding and k[1]]
            if len(sided) == 1:
                key = sided[0]  # "Left effusion ... The effusion is small": the same finding
        elif mention.side and (mention.finding, "") in states:
            # an earlier side-less mention of the same finding gets this side
            states[key] = states.pop((mention.finding, ""))
            states[key].side = mention.side
        present = mention.present
        state = states.get(key)
        if state is None:
            states[key] = FindingState(
                finding=mention.finding, side=mention.side, present=present, severity=mention.severity,
                location=mention.location, size_mm=mention.size_mm, device=mention.device, tip=mention.tip,
                change=mention.change, uncertain=mention.uncertain, order=order, noun=mention.text,
            )
            continue
        if state.present != present and not (state.uncertain or mention.uncertain) and mention.change is None and state.change is None:
            conflicts += 1
        # a positive or changing mention is more informative than a plain negative one
        if present and not state.present and state.change is None:
            state.present = True
        state.severity = state.severity or mention.severity
        state.location = state.location or mention.location
        state.tip = state.tip or mention.tip
        if mention.size_mm is not None:
            state.size_mm = max(state.size_mm or 0.0, mention.size_mm)
        if state.change is None and mention.change is not None:
            state.change = mention.change
            state.present = present
        state.uncertain = state.uncertain and mention.uncertain
    return states, conflicts


def _sides_overlap(a: str | None, b: str | None) -> bool:
    """An unspecified side matches any side; "bilateral" covers left and right."""
    return a == b or not a or not b or "bilateral" in (a, b)


def _candidates(prior: dict[tuple[str, str], FindingState], key: tuple[str, str]) -> list[tuple[str, str]]:
    """Prior keys that ``key`` may refer to: itself, else the same finding on an overlapping side."""
    if key in prior:
        return [key]
    if key[0] == "Support Devices":
        return []
    return [k for k in prior if k[0] == key[0] and _sides_overlap(k[1], key[1])]


def _match(prior: dict[tuple[str, str], FindingState], key: tuple[str, str]) -> tuple[str, str] | None:
    candidates = _candidates(prior, key)
    return candidates[0] if len(candidates) == 1 else None


def diff_states(prior: dict, followup: dict, *, followup_lists_devices: bool = False,
                prior_lists_devices: bool = True) -> tuple[list[Change], int]:
    """Progression items from prior to follow-up states; also the number of items contradicting the
    reports (e.g. "new" for a finding the prior report already describes with the same severity).

    ``followup_lists_devices``: the follow-up section lists every device in place (a findings
    section), so a prior device it leaves out was removed. ``prior_lists_devices``: the prior text
    would name a device in place (False when the prior report has no findings section), so a device
    it does not name was placed since.
    """
    changes: list[Change] = []
    conflicts = 0
    used: set = set()
    pending = []
    for key, after in sorted(followup.items(), key=lambda item: item[1].order):
        candidates = _candidates(prior, key)
        if not key[1] and len(candidates) > 1:
            # "No pneumothorax." after a left and a right pneumothorax: the statement covers each of them
            pending += [(k, prior[k], dataclasses.replace(after, side=prior[k].side)) for k in candidates]
        else:
            pending.append((candidates[0] if len(candidates) == 1 else None, prior[candidates[0]] if len(candidates) == 1 else None, after))
    for prior_key, before, after in pending:
        if prior_key:
            used.add(prior_key)
        device = after.finding == "Support Devices"
        common = dict(
            finding=after.finding, side=after.side or (before.side if before else None),
            location=after.location or (before.location if before else None),
            severity_before=before.severity if before and before.present else None, severity_after=after.severity,
            size_before=before.size_mm if before and before.present else None, size_after=after.size_mm,
            device=after.device, tip=after.tip, noun=after.noun, order=after.order,
        )
        kind, explicit = after.change, True
        if kind is None and device and before is None and not prior_lists_devices:
            continue  # the prior report cannot tell whether this device is new
        if kind is None:
            explicit = False
            if after.present:
                if before is None or not before.present:
                    kind = "placed" if device else "new"
                else:
                    kind = _compare(before, after)
            elif before is not None and before.present:
                kind = "removed" if device else "resolved"
        elif kind == "new" and before is not None and before.present and before.severity == after.severity and not before.uncertain:
            conflicts += 1
        if kind is None:
            continue  # absent in both (a normal statement)
        if kind in ("resolved", "removed"):
            common["severity_after"] = None
            common["severity_before"] = common["severity_before"] or after.severity
        changes.append(Change(kind=kind, explicit=explicit, from_silence=(not explicit and before is None), **common))
    if followup_lists_devices:
        # a findings section lists the devices in place: a prior device it leaves out was removed
        for key, before in prior.items():
            if key[0] == "Support Devices" and key not in used and before.present and key[1] != "support device" and key not in followup:
                changes.append(Change(finding=key[0], kind="removed", device=before.device, explicit=False, from_silence=True,
                                      order=len(followup) + before.order, noun=before.noun))
                used.add(key)
    generic = [c for c in changes if c.finding == "Support Devices" and c.device == "support device" and c.kind == "removed"]
    if generic:
        # "The support devices have been removed": every device of the prior report not mentioned again
        changes = [c for c in changes if c not in generic]
        for key, before in prior.items():
            if key[0] == "Support Devices" and key not in used and before.present and key[1] != "support device":
                changes.append(Change(finding=key[0], kind="removed", device=before.device, order=generic[0].order, noun=before.noun))
    return _sorted(changes), conflicts


def _sorted(changes: list[Change]) -> list[Change]:
    return sorted(changes, key=lambda c: (_KIND_ORDER.index(c.kind), c.order))


#: findings that name one airspace process at one place in different words ("consolidation" / "pneumonia")
_AIRSPACE = {"Consolidation", "Pneumonia", "Lung Opacity"}


def _same_item(a: Change, b: Change) -> bool:
    if a.finding != b.finding:
        if not (a.finding in _AIRSPACE and b.finding in _AIRSPACE):
            return False
        if a.location and b.location and a.location != b.location:
            return False
    if a.finding == "Support Devices":
        return a.device == b.device
    return _sides_overlap(a.side, b.side)


def _union(primary: list[Change], secondary: list[Change]) -> list[Change]:
    """``primary`` plus the real changes of ``secondary`` it does not cover (all of them if ``primary`` is empty)."""
    extra = [c for c in secondary if not any(_same_item(c, p) for p in primary) and (c.kind != "unchanged" or not primary)]
    return _sorted(primary + extra)


def _merge_sides(changes: list[Change]) -> list[Change]:
    """One bilateral item for the same change on both sides ("Bilateral pleural effusions have resolved.")."""
    out: list[Change] = []
    for change in changes:
        twin = next((c for c in out if change.side in ("left", "right") and c.side in ("left", "right") and c.side != change.side
                     and c.finding == change.finding and c.finding not in ("Support Devices", "Lung Lesion")
                     and _merge_key(c) == _merge_key(change)), None)
        if twin is None:
            out.append(change)
        else:
            out[out.index(twin)] = dataclasses.replace(twin, side="bilateral", explicit=twin.explicit and change.explicit,
                                                       from_silence=twin.from_silence or change.from_silence)
    return out


def _merge_key(change: Change) -> tuple:
    # a resolution is worded without severities, so "small left" and "moderate right" merge
    if change.kind == "resolved":
        return (change.kind, change.location)
    return (change.kind, change.location, change.severity_before, change.severity_after)


def _compare(before: FindingState, after: FindingState) -> str:
    if before.size_mm and after.size_mm and abs(after.size_mm - before.size_mm) >= 2.0:
        return "increased" if after.size_mm > before.size_mm else "decreased"
    rank_before, rank_after = severity_rank(before.severity), severity_rank(after.severity)
    if rank_before is not None and rank_after is not None and rank_before != rank_after:
        return "increased" if rank_after > rank_before else "decreased"
    if after.finding == "Support Devices" and before.tip and after.tip and not _same_tip(before.tip, after.tip):
        return "repositioned"
    return "unchanged"


def _same_tip(a: str, b: str) -> bool:
    """"4 cm above the carina" ~ "4.5 cm above the carina"; "svc" ~ "mid svc" (reports round and vary wording)."""
    def split(tip: str) -> tuple[float | None, str]:
        match = re.match(r"(\d+(?:\.\d+)?)\s*cm\s+(.*)", tip)
        return (float(match.group(1)), match.group(2)) if match else (None, tip)

    (da, pa), (db, pb) = split(a), split(b)
    if da is not None and db is not None:
        return pa == pb and abs(da - db) < 1.5
    return pa in pb or pb in pa


# ------------------------------------------------------------------------------ annotator
class RulesAnnotator:
    """Deterministic, offline annotator (``make_annotator("rules")``). Stateless, so thread-safe."""

    name = "rules"
    version = RULES_VERSION

    def __init__(self, credentialed: bool = False) -> None:
        if credentialed:
            log.warning("the rules annotator is running on credentialed real reports: it is an offline stand-in; the "
                        "paper annotated ICG-CXR with GPT-4, which `progemu curate --annotator llm --llm-base-url URL "
                        "--llm-model NAME` reproduces with an endpoint you may send the reports to")

    def analyse(self, prior: ReportText, followup: ReportText) -> "RulesAnalysis":
        """The structured result behind :meth:`annotate` (changes for prompt and interpretation)."""
        sections = {
            "prior findings": parse_report(prior.findings), "prior impression": parse_report(prior.impression),
            "follow-up findings": parse_report(followup.findings), "follow-up impression": parse_report(followup.impression),
        }
        similarity, ignored = report_similarity(prior, followup), 0
        if similarity >= NEAR_IDENTICAL:  # one note copied to both studies: shared sentences say nothing of this interval
            sections, ignored = _ignore_copied_changes(sections)
        states = {name: section_state(parsed) for name, parsed in sections.items()}
        conflicts = sum(count for _, count in states.values())
        prior_impression, prior_findings = states["prior impression"][0], states["prior findings"][0]
        follow_impression, follow_findings = states["follow-up impression"][0], states["follow-up findings"][0]
        # a section silent about a finding defers to the other section of the same report
        prior_lists = bool(sections["prior findings"].sentences)
        impression_changes, c1 = diff_states(_fallback(prior_impression, prior_findings), follow_impression,
                                             prior_lists_devices=prior_lists)
        findings_changes, c2 = diff_states(_fallback(prior_findings, prior_impression), follow_findings,
                                           followup_lists_devices=bool(sections["follow-up findings"].sentences),
                                           prior_lists_devices=prior_lists)
        conflicts += c1 + c2
        _enrich(impression_changes, prior_findings, follow_findings)
        _enrich(findings_changes, prior_impression, follow_impression)
        # the prompt follows the impressions, the interpretation the findings; each borrows the real
        # changes only the other section states (e.g. devices, which impressions often leave out)
        return RulesAnalysis(
            sections=sections,
            prompt_changes=_merge_sides(_union(impression_changes, findings_changes)),
            interpretation_changes=_merge_sides(_union(findings_changes, impression_changes)),
            conflicts=conflicts,
            similarity=similarity,
            ignored_change_words=ignored,
        )

    def annotate(self, prior: ReportText, followup: ReportText, record_id: str) -> Annotation:
        """Prompt, interpretation and confidence for one pair (never raises for odd text; ``record_id`` unused)."""
        analysis = self.analyse(prior, followup)
        confidence, reason = _confidence(analysis.sections, analysis.conflicts,
                                         analysis.prompt_changes + analysis.interpretation_changes)
        if analysis.ignored_change_words:
            identical = analysis.similarity >= 1.0
            confidence = min(confidence, 1 if identical else 2)
            reason = (f"Prior and follow-up reports are {'identical' if identical else 'near-identical'} "
                      f"(similarity {analysis.similarity:.2f}): {analysis.ignored_change_words} change word(s) in "
                      f"sentences both reports hold describe an earlier interval and were ignored. {reason}")
        return Annotation(
            prompt=render_prompt(analysis.prompt_changes),
            interpretation=render_interpretation(analysis.interpretation_changes),
            confidence=confidence,
            reason=reason,
        )


@dataclasses.dataclass
class RulesAnalysis:
    sections: dict[str, ParsedReport]
    prompt_changes: list[Change]
    interpretation_changes: list[Change]
    conflicts: int
    similarity: float = 0.0  # report_similarity of the two reports
    ignored_change_words: int = 0  # change words of copied sentences left out (near-identical reports)


def _ignore_copied_changes(sections: dict[str, ParsedReport]) -> tuple[dict[str, ParsedReport], int]:
    """The sections with the change words removed from follow-up sentences that the prior report also holds."""
    def key(sentence: str) -> str:
        return " ".join(re.findall(r"[a-z0-9]+", sentence.lower()))

    prior = {key(s) for name in ("prior findings", "prior impression") for s in sections[name].sentences}
    out, ignored = dict(sections), 0
    for name in ("follow-up findings", "follow-up impression"):
        parsed = sections[name]
        copied = {i for i, sentence in enumerate(parsed.sentences) if key(sentence) in prior}
        mentions = []
        for mention in parsed.mentions:
            if mention.sentence in copied and mention.change is not None:
                ignored += mention.change != "unchanged"
                mention = dataclasses.replace(mention, change=None)
            mentions.append(mention)
        out[name] = dataclasses.replace(parsed, mentions=mentions)
    return out, ignored


def report_similarity(prior: ReportText, followup: ReportText) -> float:
    """difflib ratio (0..1) of the two reports' lower-cased word sequences (findings then impression); 0 if one is empty."""
    def words(report: ReportText) -> list[str]:
        return re.findall(r"[a-z0-9]+", f"{report.findings} {report.impression}".lower())

    a, b = words(prior), words(followup)
    if not a or not b:
        return 0.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _fallback(main: dict, other: dict) -> dict:
    merged = dict(main)
    for key, state in other.items():
        if _match(main, key) is None:
            merged[key] = dataclasses.replace(state, change=None)
    return merged


def _enrich(changes: list[Change], prior_other: dict, follow_other: dict) -> None:
    """Fill severity, size, side, location and device tip left unsaid in one section from the other
    section of the same report ("Cardiomegaly." in the impression, "Moderate cardiomegaly." in the findings)."""
    for change in changes:
        key = (change.finding, change.device or "support device") if change.finding == "Support Devices" else (change.finding, change.side or "")
        before = prior_other.get(_match(prior_other, key)) if _match(prior_other, key) else None
        after = follow_other.get(_match(follow_other, key)) if _match(follow_other, key) else None
        if after is not None and after.present and change.kind not in ("resolved", "removed"):
            change.severity_after = change.severity_after or after.severity
            change.size_after = change.size_after or after.size_mm
            change.tip = change.tip or after.tip
        if before is not None and before.present and change.kind not in ("new", "placed"):
            change.severity_before = change.severity_before or before.severity
            change.size_before = change.size_before or before.size_mm
        for state in (after, before):
            if state is not None:
                change.side = change.side or state.side
                change.location = change.location or state.location


def _confidence(sections: dict[str, ParsedReport], conflicts: int, changes: list[Change]) -> tuple[int, str]:
    total = sum(len(p.sentences) for p in sections.values())
    understood = sum(p.n_understood for p in sections.values())
    missing = [name for name, parsed in sections.items() if not parsed.sentences]
    if total == 0:
        return 1, "Both reports are empty."
    fraction = understood / total
    # prompt and interpretation often describe the same item: count each item once
    unique = {(c.finding, c.side, c.device, c.kind): c for c in changes}
    changes = list(unique.values())
    silent = sum(1 for c in changes if c.from_silence)
    penalty = min(2.0, 1.0 * conflicts) + 0.5 * len(missing) + min(1.0, 0.5 * silent)
    score = 1.0 + 4.0 * fraction - penalty
    confidence = int(max(1, min(5, int(score + 0.5))))
    stated = sum(1 for c in changes if c.explicit)
    parts = [f"Understood {understood} of {total} sentences"]
    parts.append(f"{stated} of {len(changes)} change statements explicit" if changes else "no change found")
    if conflicts:
        parts.append(f"{conflicts} contradictory statement{'s' if conflicts > 1 else ''}")
    if silent:
        parts.append(f"{silent} change{'s' if silent > 1 else ''} inferred from a finding one report does not mention")
    if missing:
        parts.append("missing: " + ", ".join(missing))
    return confidence, "; ".join(parts) + "."
