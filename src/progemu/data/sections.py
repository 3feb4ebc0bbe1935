"""Sections of a free-text MIMIC-CXR report, following the official MIMIC-CXR rules.

The rules are those of MIT-LCP/mimic-cxr ``txt/section_parser.py`` (see
``shared/reference/formats.md`` §1), re-implemented here:

1. a header is an upper-case label at the start of a line after one leading space, ending in
   a colon and followed by white space (``\\n ([A-Z ()/,-]+):\\s``); text before the first
   header is ``preamble``; a report without any header is one ``full report`` section.
   After a header, the search for the next header resumes at the end of the header's line
   (a header never starts on the line of the previous one).
2. names are lower-cased and normalised (:func:`normalise_section_name`): synonyms and typos
   ("conclusion", "findings and impression", "impresson", "finding", "findins", ...), any name
   containing impression/findings/history/comparison/addendum becomes that word, and names
   that describe the views ("pa and lateral", "portable", "chest, two views") become findings.
3. empty findings / impression sections are dropped; if neither is left, the tail of the last
   section after its first blank line becomes ``last_paragraph``.
4. a repeated section: the last occurrence wins (:func:`extract_sections`).

:func:`findings_and_impression` gives the two texts curation needs, whitespace-normalised.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Section",
    "split_sections",
    "normalise_section_name",
    "extract_sections",
    "findings_and_impression",
    "clean_text",
]

_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
# A blank line as it appears in the raw reports: newline, one space, newline.
_BLANK_LINE = "\n \n"

#: exact (lower-cased) names -> canonical name: frequent synonyms and the typos seen in MIMIC-CXR
_SYNONYMS: dict[str, str] = {
    "comparisons": "comparison", "comparision": "comparison", "comparsion": "comparison",
    "comparrison": "comparison", "comparisions": "comparison", "reference exam": "comparison",
    "comparison exam": "comparison", "comparison film": "comparison",
    "clinical history": "history", "clinical information": "history", "patient history": "history",
    "pfi": "history",
    "reason for examination": "indication", "reason for exam": "indication",
    "clinical indication": "indication", "idication": "indication",
    "exam": "examination", "type of examination": "examination",
    "conclusion": "impression", "findings and impression": "impression",
    "findings/impression": "impression", "findings/ impression": "impression",
    "impresson": "impression", "imprression": "impression", "imoression": "impression",
    "impressoin": "impression", "imprssion": "impression", "impresion": "impression",
    "imperssion": "impression", "mpression": "impression", "impession": "impression",
    "ndication": "impression",
    "finding": "findings", "findins": "findings", "findindgs": "findings", "findgings": "findings",
    "findngs": "findings", "findnings": "findings", "finidngs": "findings",
    "reference findings": "findings", "chest, two views": "findings",
    "recommendation(s)": "recommendations", "recommendation": "recommendations",
    "wetread": "wet read",
}
#: a name containing one of these words becomes that word (checked in this order)
_MAIN_WORDS = ("impression", "findings", "history", "comparison", "addendum")
#: a name describing the views of the study is the findings section
_VIEW_NAMES = re.compile(
    r"(chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|two views|"
    r"frontal view|pa view|ap view|one view|lateral view|bone window|frontal upright|frontal semi-upright|"
    r"ribs|pa and lat)"
)
_KNOWN = {"preamble", "impression", "comparison", "indication", "findings", "examination", "technique",
          "history", "notification", "recommendations", "addendum", "date", "comment", "wet read",
          "full report", "last_paragraph"}


@dataclass(frozen=True)
class Section:
    """One section: canonical ``name``, raw ``text`` (not stripped), ``start`` offset in the report."""

    name: str
    text: str
    start: int


def normalise_section_name(name: str) -> str:
    """Canonical section name for a raw header label (see the module docstring, rule 2)."""
    name = name.strip().lower()
    if name in _KNOWN:
        return name
    if name in _SYNONYMS:
        return _SYNONYMS[name]
    for word in _MAIN_WORDS:
        if word in name:
            return word
    if _VIEW_NAMES.search(name):
        return "findings"
    return name


def split_sections(text: str) -> list[Section]:
    """All sections of one raw report in order (rules 1-3 of the module docstring)."""
    sections: list[Section] = []
    match = _HEADER.search(text)
    if match is None:
        return [Section("full report", text, 0)]
    sections.append(Section("preamble", text[: match.start(1)], 0))
    while match is not None:
        name = match.group(1)
        body_start = match.end()
        line_end = text.find("\n", body_start)
        # Resume after the current line, so a colon-terminated phrase on the header's own line
        # never opens a new section (the official parser's behaviour).
        next_match = _HEADER.search(text, body_start + (line_end - body_start if line_end != -1 else 0))
        body_end = len(text) if next_match is None else next_match.start()
        sections.append(Section(normalise_section_name(name), text[body_start:body_end], body_start))
        match = next_match
    sections = [s for s in sections if not (s.name in ("findings", "impression") and not s.text.strip())]
    names = {s.name for s in sections}
    if "findings" not in names and "impression" not in names:
        last = sections[-1]
        if _BLANK_LINE in last.text:
            head, tail = last.text.split(_BLANK_LINE, 1)
            sections[-1] = Section(last.name, head, last.start)
            sections.append(Section("last_paragraph", tail, last.start + len(head)))
    return sections


def extract_sections(text: str) -> dict[str, str]:
    """Canonical name -> stripped text; a repeated section keeps its **last** occurrence (rule 4)."""
    out: dict[str, str] = {}
    for section in split_sections(text):
        out[section.name] = section.text.strip()
    return out


def clean_text(text: str) -> str:
    """Collapse the 79-column wrapping and runs of white space into single spaces."""
    return re.sub(r"\s+", " ", text).strip()


def findings_and_impression(text: str) -> tuple[str, str]:
    """``(findings, impression)`` of one raw report, whitespace-normalised ("" when absent).

    Reports sometimes start with an addendum block closed by a full line of underscores; the
    header rules already put it in the preamble or ``addendum``, so nothing special is done.
    """
    sections = extract_sections(text)
    return clean_text(sections.get("findings", "")), clean_text(sections.get("impression", ""))
