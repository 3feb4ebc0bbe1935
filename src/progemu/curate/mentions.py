"""Finding mentions in chest X-ray report text: the parser under the ``rules`` annotator.

A :class:`Mention` is one finding named in one sentence, with the attributes the annotator
needs to describe progression: the CheXpert label (``finding``), ``side``, ``location``,
``severity``, ``negated`` / ``uncertain``, a ``change`` word (new / increased / decreased /
resolved / unchanged; placed / removed / repositioned for devices), a nodule ``size_mm`` and
the ``device`` type. The approach is the NegEx / CheXpert-labeler one, kept small and
explicit: a lexicon of finding phrases, then attribute words searched in the text between a
finding and its neighbours within the same clause, and negation scoped from its trigger to
the end of the clause.

:func:`parse_report` also says which sentences it *understood* (produced a mention or matched
a known normal / irrelevant statement), which the annotator turns into its confidence.
Pure functions; no state; thread-safe.
"""
from __future__ import annotations

import dataclasses
import re

__all__ = ["Mention", "ParsedReport", "parse_report", "split_sentences", "SEVERITY_RANK", "normalise_severity"]


@dataclasses.dataclass(frozen=True)
class Mention:
    """One finding mentioned in one sentence.

    ``finding``: a CheXpert label name (``progemu.data.labels.CHEXPERT_LABELS``).
    ``side``: "left" | "right" | "bilateral" | None. ``location``: e.g. "lower lobe", "base",
    "apex", "upper lobe", "perihilar" or None. ``severity``: normalised word ("trace", "small",
    "mild", "moderate", "large", "severe", "small to moderate", ...) or None. ``change``:
    "new" | "increased" | "decreased" | "resolved" | "unchanged" | "placed" | "removed" |
    "repositioned" | None. ``size_mm``: largest dimension of a lesion in mm, or None.
    ``device``: normalised device name for Support Devices, else None. ``tip``: where a device tip
    projects, if stated. ``sentence``: 0-based index in the parsed text. ``text``: the matched words.
    """

    finding: str
    side: str | None = None
    location: str | None = None
    severity: str | None = None
    negated: bool = False
    uncertain: bool = False
    change: str | None = None
    size_mm: float | None = None
    device: str | None = None
    tip: str | None = None
    sentence: int = 0
    text: str = ""

    @property
    def present(self) -> bool:
        return not self.negated and self.change not in ("resolved", "removed")


@dataclasses.dataclass
class ParsedReport:
    """``sentences``: the split sentences; ``understood[i]``: sentence i produced a mention or a
    known normal/irrelevant statement; ``mentions`` in reading order."""

    sentences: list[str]
    understood: list[bool]
    mentions: list[Mention]

    @property
    def n_understood(self) -> int:
        return sum(self.understood)


# ---------------------------------------------------------------------------------- lexicons
_F = "Pleural Effusion", "Pneumothorax", "Cardiomegaly", "Edema", "Consolidation", "Pneumonia", "Atelectasis"
#: (label, regex); earlier and longer matches win overlaps
_FINDING_PATTERNS: list[tuple[str, str]] = [
    ("Support Devices", r"(?:endotracheal|et) tube|\bett\b|(?:nasogastric|orogastric|ng|og|enteric|feeding|dobhoff|dobbhoff) tube|"
     r"\bpicc(?: line)?|(?:central venous|central|internal jugular|ij|subclavian|swan[- ]ganz|pulmonary artery|venous) (?:line|catheter)s?|"
     r"chest tubes?|pigtail catheters?|pleural (?:drain|catheter)s?|tracheostomy(?: tube)?|"
     r"(?:cardiac |dual[- ]chamber |single[- ]chamber )?pacemakers?(?: leads?| wires?| device)?|pacer(?: leads?| wires?)?|"
     r"(?:aicd|icd|defibrillator)(?: leads?)?|(?:median )?sternotomy wires?|sternal wires|"
     r"surgical clips|(?:port-a-cath|portacath|chest port|port)\b|(?:lines and tubes|support devices|monitoring leads)"),
    ("Enlarged Cardiomediastinum", r"(?:widen(?:ed|ing) (?:of the )?(?:superior )?mediastin(?:um|al contours?|al silhouette))|"
     r"mediastinal widening|(?:enlarged |enlargement of the )?cardiomediastinal (?:silhouette|contours?)|mediastin(?:um|al contours?)\b"),
    ("Cardiomegaly", r"cardiomegaly|(?:cardiac|heart) (?:silhouette|size|shadow|contours?)|(?:enlarged|large) heart|heart is (?:\w+ )?enlarged|"
     r"cardiac enlargement|enlargement of the (?:cardiac silhouette|heart)|heart\b"),
    ("Pleural Effusion", r"(?:pleural )?effusions?|pleural fluid|hydrothorax|blunting of (?:the )?(?:\w+ )?costophrenic angles?|"
     r"(?:\w+ )?costophrenic angles? (?:is |are )?(?:now )?blunt(?:ed|ing)|costophrenic (?:angle )?blunting"),
    ("Pneumothorax", r"pneumothora(?:x|ces)|hydropneumothorax"),
    ("Edema", r"(?:pulmonary |interstitial |alveolar |perihilar )?edema|(?:pulmonary )?vascular congestion|"
     r"fluid overload|kerley b lines|vascular engorgement"),
    ("Pneumonia", r"pneumonias?|infectious process|(?:superimposed )?infection"),
    ("Consolidation", r"consolidations?|consolidative (?:opacit(?:y|ies)|process)"),
    ("Atelectasis", r"atelectasis|atelectatic (?:changes?|opacit(?:y|ies))|(?:lobar )?collapse|volume loss"),
    ("Lung Lesion", r"nodules?|nodular (?:opacit(?:y|ies)|densit(?:y|ies))|masse?s?\b|lesions?|granulomas?|neoplasm|tumou?r"),
    ("Fracture", r"fractures?d?"),
    ("Pleural Other", r"pleural thickening|pleural plaques?|fibrothorax|pleural scarring"),
    ("Lung Opacity", r"opacit(?:y|ies)|opacification|air ?space (?:disease|process)|infiltrates?|haziness|densit(?:y|ies)"),
]
_FINDING_RE = [(label, re.compile(rf"\b(?:{pattern})", re.IGNORECASE)) for label, pattern in _FINDING_PATTERNS]

_DEVICE_NAMES = [
    (r"endotracheal|\bet tube|\bett\b", "endotracheal tube"),
    # NG / OG / feeding tubes are reported interchangeably as "enteric tube": one device type
    (r"nasogastric|\bng\b|orogastric|\bog\b|enteric|feeding|dobb?hoff", "enteric tube"),
    (r"picc", "PICC line"),
    (r"swan|pulmonary artery", "pulmonary artery catheter"),
    (r"central|jugular|\bij\b|subclavian|venous", "central venous catheter"),
    (r"chest tube|pigtail|pleural (?:drain|catheter)", "chest tube"),
    (r"tracheostomy", "tracheostomy tube"),
    (r"pacemaker|pacer", "pacemaker"),
    (r"aicd|\bicd\b|defibrillator", "defibrillator"),
    (r"sternotomy|sternal", "sternotomy wires"),
    (r"clips", "surgical clips"),
    (r"\bport\b|port-a-cath|portacath", "chest port"),
]

_SEVERITY_WORDS = r"trace|tiny|minimal|very small|small|mild(?:ly)?|moderate(?:ly)?|large|severe(?:ly)?|massive|extensive|substantial|marked(?:ly)?|patchy"
_SEVERITY_RE = re.compile(rf"\b((?:{_SEVERITY_WORDS})(?:(?:\s*(?:-|to)\s*)(?:{_SEVERITY_WORDS}))?)\b", re.IGNORECASE)
#: numeric scale used to compare severities between reports (small and mild are the same step)
SEVERITY_RANK = {"trace": 1.0, "tiny": 1.0, "minimal": 1.0, "very small": 1.0, "small": 2.0, "mild": 2.0, "patchy": 2.0,
                 "moderate": 3.0, "large": 4.0, "severe": 4.0, "marked": 4.0, "substantial": 4.0, "extensive": 4.0, "massive": 5.0}

_SIDE_RE = re.compile(r"\b(left|right|bilateral(?:ly)?|both|bibasilar|bibasal|biapical|l|r)\b(?!\s*(?:ventric|atri|heart))", re.IGNORECASE)
_SIDE_AFTER_RE = re.compile(
    r"^[\s,]*(?:(?:is|are|seen|noted|present|located)\s+)*(?:(?:on|in|at|of|within|along|involving|over|at the level of)\s+)"
    r"(?:the\s+)?(?:\w+\s+)?(?:left|right|both|bilateral)\b(?:\s+and\s+(?:the\s+)?(?:left|right)\b)?",
    re.IGNORECASE,
)
_LOCATION_RE = re.compile(
    r"\b(upper|middle|mid|lower) (lobe|lung|zone|lung zone|field|lung field)s?\b|\b(lingula)\b|"
    r"\b(base|basilar|basal|bases|bibasilar|bibasal|apex|apical|apices|biapical|perihilar|retrocardiac|infrahilar|suprahilar|hilar)\b",
    re.IGNORECASE,
)
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:x\s*(\d+(?:\.\d+)?)\s*)?(mm|cm)\b", re.IGNORECASE)
_TIP_RE = re.compile(
    r"(?:tip|terminat\w*|ends?)\s+(?:is\s+|now\s+|again\s+|approximately\s+|about\s+|\d+(?:\.\d+)?\s*cm\s+)*(?:seen\s+)?"
    r"(?:in|at|over|within|near|above|below|projects? over|projecting over)\s+"
    r"(?:the\s+)?([a-z][a-z /-]{2,40}?)(?=\s*(?:[,.;]|$|\band\b|\bwhich\b|\bwith\b))",
    re.IGNORECASE,
)

# change words; order within a group does not matter, groups are searched in this order
_CHANGE_PATTERNS: list[tuple[str, str]] = [
    ("removed", r"(?:has|have) been removed|interval removal|removed|no longer (?:present|seen|visualized|identified)"),
    ("placed", r"(?:has|have) been (?:placed|inserted|introduced)|interval (?:placement|insertion)|newly placed"),
    ("repositioned", r"(?:has|have) been (?:advanced|withdrawn|retracted|repositioned|pulled back)|"
     r"interval (?:advancement|withdrawal|repositioning)|(?:advanced|withdrawn|retracted|repositioned|pulled back)"),
    ("resolved", r"(?:has|have) (?:since )?(?:resolved|cleared)|resolved|resolution|no longer (?:present|seen|visualized|identified|evident|apparent)|"
     r"cleared|interval clearing|disappeared"),
    ("increased", r"increas(?:ed|ing)|interval increase|larger|enlarging|worse(?:ned|ning)?|progress(?:ed|ion|ing)|"
     r"(?:has|have) (?:further )?enlarged|further enlarged|more (?:prominent|extensive|conspicuous|pronounced|dense)|grown|has grown|greater|extended"),
    ("decreased", r"decreas(?:ed|ing)|interval decrease|smaller|improv(?:ed|ing|ement)|diminish(?:ed|ing)|reduc(?:ed|tion)|"
     r"less (?:prominent|extensive|conspicuous|pronounced|dense)|regress(?:ed|ion|ing)|resolving|partially resolved|shrunk|lessened"),
    ("new", r"\bnew(?:ly)?\b|(?:has|have) (?:since )?(?:developed|appeared)|interval development|interval appearance|developing|"
     r"now (?:seen|present|visible|noted|demonstrated|evident)|appeared"),
    ("unchanged", r"unchanged|stable|persist(?:s|ent|ently|ing)?|again (?:seen|noted|demonstrated|visualized)|similar|"
     r"no (?:significant |interval )?change|not (?:significantly )?changed|redemonstrated|re-demonstrated|remains?|remained|constant|"
     r"in (?:unchanged|stable|standard|appropriate|satisfactory) position|as before|previously (?:seen|noted|described)|known"),
]
_CHANGE_RE = [(kind, re.compile(rf"\b(?:{pattern})", re.IGNORECASE)) for kind, pattern in _CHANGE_PATTERNS]

_NEG_PRE_RE = re.compile(
    r"\b(?:no|without|free of|negative for|absence of|rather than|resolution of|clear of|"
    r"no (?:evidence|radiographic evidence|sign|signs|findings) (?:of|to suggest)|not (?:see|seen|identified)|"
    r"there (?:is|are) no|(?:rule|ruled) out|exclude[sd]?)\b(?!\s+(?:longer|change|significant change|interval change))",
    re.IGNORECASE,
)
_NEG_POST_RE = re.compile(
    r"\b(?:(?:is|are|was|were)\s+)?(?:not (?:seen|identified|present|visualized|appreciated|evident|detected|demonstrated)|"
    r"absent|excluded|has resolved|have resolved|(?:is|are) (?:not enlarged|normal|within normal limits|unremarkable|"
    r"top normal|top-normal|upper limits? of normal|normal in size|stable in size and normal|grossly normal))\b",
    re.IGNORECASE,
)
_UNCERTAIN_RE = re.compile(
    r"\b(?:possible|possibly|may|might|could|probable|probably|questionable|equivocal|suspect(?:ed)?|suspicious|"
    r"concern(?:ing)? for|cannot be (?:excluded|ruled out)|not excluded|can't be excluded|versus|vs\.?|suggest(?:s|ive|ing)?|likely|"
    r"borderline|difficult to exclude)\b",
    re.IGNORECASE,
)
_NOT_EXCLUDED_RE = re.compile(r"\b(?:cannot|can't|could not|not) (?:be )?(?:excluded|ruled out)|difficult to exclude", re.IGNORECASE)
#: a clause ends here: negation and change words do not cross it
_CLAUSE_SPLIT_RE = re.compile(r";|\bbut\b|\bhowever\b|\bwhile\b|\balthough\b|\bwhereas\b|\bexcept\b|, with\b", re.IGNORECASE)

#: sentences that carry no finding but are understood (normal statements, technique, irrelevant anatomy)
_UNDERSTOOD_RE = re.compile(
    r"\b(?:lungs? (?:are|is|remain|appear)s? (?:\w+ )?(?:clear|expanded|well[- ]expanded|well aerated)|clear lungs|"
    r"no acute (?:cardiopulmonary|intrathoracic|pulmonary|osseous|chest)|normal (?:chest|radiograph|study|examination)|"
    r"unremarkable|within normal limits|no (?:significant|interval|appreciable) (?:interval )?change|"
    r"(?:osseous|bony|bone|skeletal) (?:structures|thorax|abnormalit)|degenerative|spondylosis|osteophyte|scoliosis|kyphosis|"
    r"soft tissues?|upper abdomen|hila|hilar contours|pulmonary vascul\w*(?: is| are)? normal|(?:pa|ap) and lateral|"
    r"portable|frontal|lateral view|single view|comparison|compared|prior (?:study|exam|radiograph)|as above|"
    r"hyperinfla|hyperexpan|emphysema|copd|low lung volumes|lung volumes|aorta|aortic|tortuous|calcifi|"
    r"diaphragm|hemidiaphragm|no (?:acute )?(?:abnormality|findings|disease|process)|stable appearance|"
    r"no other|otherwise|technique|examination|evaluation|cannot be (?:evaluated|assessed)|no (?:evidence of )?(?:acute|active)|"
    r"^(?:negative|normal|stable)\b|negative for|trachea|intact|pleural spaces? (?:is|are) clear|lungs clear|vascula|"
    r"^chest\b|\bimages?\b|contours? (?:is|are) normal|tuberculosis|notification|notified|discussed|subdiaphragmatic|free air|"
    r"mediastin|cardiac|heart|granulomatous|sternotomy|\b(?:are|is) (?:grossly )?normal|\bclear\b|inflat|aerat|"
    r"\bno change|^unchanged$|acute cardiopulmonary|hernia|knee|shoulder|\bfoot\b|abdomen|scarring|osteopeni|demineral|"
    r"cholecystectomy|correlat|end of report|^dr\b|^change$|\bribs?\b|limited)",
    re.IGNORECASE,
)


def normalise_severity(word: str | None) -> str | None:
    """"Moderately" -> "moderate", "small-to-moderate" -> "small to moderate"; None stays None."""
    if not word:
        return None
    parts = re.split(r"\s*(?:-|\bto\b)\s*", word.lower().strip())
    cleaned = []
    for part in parts:
        part = re.sub(r"ly$", "", part.strip()) if part.strip() not in ("slightly",) else "slight"
        part = {"sever": "severe", "mild": "mild", "marked": "marked", "slight": "slight", "moderate": "moderate"}.get(part, part)
        if part == "severe" or part in SEVERITY_RANK:
            cleaned.append(part)
    if not cleaned:
        return None
    return " to ".join(dict.fromkeys(cleaned))


def severity_rank(severity: str | None) -> float | None:
    """Numeric severity (mean of a range such as "small to moderate"); None when unknown."""
    if not severity:
        return None
    values = [SEVERITY_RANK[p] for p in severity.split(" to ") if p in SEVERITY_RANK]
    return sum(values) / len(values) if values else None


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (de-identification marks ``___`` / ``XXXX`` removed).

    Splits after ``.``/``!``/``?``/``;``-free sentence ends followed by white space, and before
    numbered-list items ("1. ... 2. ..."); decimals like "1.5 cm" are not split.
    """
    text = re.sub(r"_{2,}|\bX{3,}\b", " ", text or "")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return []
    text = re.sub(r"(?:(?<=\s)|^)(\d{1,2})[.)]\s+(?=[A-Za-z])", "\n", text)  # numbered items
    pieces = []
    for chunk in text.split("\n"):
        pieces.extend(re.split(r"(?<=[.!?])\s+(?=[A-Za-z(\d])", chunk))
    return [piece.strip(" .") for piece in pieces if piece.strip(" .")]


def _device_name(text: str) -> str:
    lowered = text.lower()
    for pattern, name in _DEVICE_NAMES:
        if re.search(pattern, lowered):
            return name
    return "support device"


def _find_findings(clause: str) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    for label, regex in _FINDING_RE:
        for match in regex.finditer(clause):
            spans.append((match.start(), match.end(), label))
    # keep the longest of overlapping matches (ties: lexicon order, already stable-sorted)
    spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    kept: list[tuple[int, int, str]] = []
    for span in spans:
        if kept and span[0] < kept[-1][1]:
            if span[1] - span[0] > kept[-1][1] - kept[-1][0]:
                kept[-1] = span
            continue
        kept.append(span)
    return kept


def _side(pre: str, post: str, matched: str) -> str | None:
    def norm(word: str) -> str:
        word = word.lower()
        if word in ("l",):
            return "left"
        if word in ("r",):
            return "right"
        if word.startswith("bi") or word == "both":
            return "bilateral"
        return word

    inside = [norm(m.group(1)) for m in _SIDE_RE.finditer(matched)]
    if inside:
        return inside[-1]
    before = [norm(m.group(1)) for m in _SIDE_RE.finditer(pre[-40:])]
    if "left" in before and "right" in before:
        return "bilateral"
    if before:
        return before[-1]
    # after the finding, only a side attached to it counts ("effusion on the left", "opacity in the right lower lobe"),
    # not the side of the next item of a list ("cardiomegaly and left effusion")
    attached = _SIDE_AFTER_RE.match(post[:60])
    if not attached:
        return None
    after = [norm(m.group(1)) for m in _SIDE_RE.finditer(attached.group(0))]
    if "left" in after and "right" in after:
        return "bilateral"
    return after[0] if after else None


def _location(pre: str, post: str) -> str | None:
    for window in (pre[-30:], post[:40]):
        match = _LOCATION_RE.search(window)
        if match:
            if match.group(1):
                zone = {"mid": "middle"}.get(match.group(1).lower(), match.group(1).lower())
                kind = "lobe" if match.group(2).lower() == "lobe" else "lung"
                return f"{zone} {kind}"
            if match.group(3):
                return "lingula"
            word = match.group(4).lower()
            return {"basilar": "base", "basal": "base", "bases": "base", "bibasilar": "base", "bibasal": "base",
                    "apical": "apex", "apices": "apex", "biapical": "apex"}.get(word, word)
    return None


def _change(pre: str, post: str) -> str | None:
    for window in (post, pre):
        best: tuple[int, str] | None = None
        for kind, regex in _CHANGE_RE:
            match = regex.search(window)
            if match and (best is None or (match.start() < best[0] if window is post else match.start() > best[0])):
                best = (match.start(), kind)
        if best:
            return best[1]
    return None


_ENLARGED_RE = re.compile(r"\b(?:enlarg\w*|large|cardiomegaly|widen\w*|increased|prominent)\b", re.IGNORECASE)
_NORMAL_SIZE_RE = re.compile(
    r"\b(?:normal|not (?:significantly |substantially )?(?:enlarged|widened)|unremarkable|within normal|upper limits? of normal|top[- ]normal|"
    r"no cardiomegaly|not enlarged)\b",
    re.IGNORECASE,
)


def _anchor_polarity(label: str, pre: str, matched: str, post: str, negated: bool, change: str | None) -> bool | None:
    """Polarity of a heart / mediastinum mention whose words carry no finding by themselves.

    "Moderate cardiomegaly" and "widened mediastinum" name the finding; "heart size", "the heart",
    "cardiac silhouette", "cardiomediastinal silhouette" only describe it in their predicate
    ("is normal", "is mildly enlarged"). Returns ``negated`` (True/False) or None when the sentence
    says nothing about enlargement.
    """
    if label == "Cardiomegaly" and re.search(r"cardiomegaly|enlarge|large", matched, re.IGNORECASE):
        return negated
    if label == "Enlarged Cardiomediastinum" and re.search(r"widen|enlarg", matched, re.IGNORECASE):
        return negated
    context = pre[-25:] + " " + post[:60]
    if _NORMAL_SIZE_RE.search(context):
        return True
    if _ENLARGED_RE.search(context):
        return negated
    if negated:
        return True
    if change in ("increased", "decreased", "new", "resolved") and label == "Cardiomegaly":
        return False
    return None


def _tip_phrase(match: re.Match) -> str:
    """ "terminates approximately 4 cm above the carina" -> "4 cm above the carina"; "tip is in the mid SVC" -> "mid svc"."""
    distance = re.search(r"(\d+(?:\.\d+)?\s*cm)\s+(above|below)", match.group(0), re.IGNORECASE)
    place = match.group(1).strip().lower()
    if distance:
        return f"{distance.group(1)} {distance.group(2).lower()} the {place}"
    return place


#: words that make a later finding in a clause the diagnosis of an earlier sign ("opacity consistent with atelectasis")
_DIAGNOSIS_RE = re.compile(r"\b(?:consistent with|compatible with|representing|reflecting|due to|in keeping with)\s+(?:\w+\s+){0,2}$", re.IGNORECASE)
#: words that make a later finding a hedged differential of an earlier one ("consolidation, concerning for pneumonia")
_DIFFERENTIAL_RE = re.compile(r"\b(?:concerning for|suspicious for|worrisome for|may represent|could represent|possibly|possible|likely|"
                              r"suggestive of|suggesting|which may be|versus|vs\.?)\s+(?:\w+\s+){0,2}$", re.IGNORECASE)


def _merge_descriptions(mentions: list[Mention], pres: list[str]) -> list[Mention]:
    """Fold a sign and its diagnosis into one mention; drop hedged differentials and "with <opacity>" descriptors.

    ``pres[i]``: the text between mention i-1 and mention i in the clause.
    """
    kept: list[Mention] = []
    for mention, pre in zip(mentions, pres):
        if kept and _DIAGNOSIS_RE.search(pre):
            sign = kept.pop()
            mention = dataclasses.replace(
                mention, side=mention.side or sign.side, location=mention.location or sign.location,
                severity=mention.severity or sign.severity, change=mention.change or sign.change,
            )
        elif kept and (_DIFFERENTIAL_RE.search(pre) and mention.uncertain):
            continue
        elif kept and mention.finding == "Lung Opacity" and re.match(r"^\s*(?:with|and)\s+(?:\w+\s+){0,2}$", pre):
            continue  # "edema with perihilar haziness": the haziness describes the edema
        kept.append(mention)
    return kept


def _negated(clause: str, spans: list[tuple[int, int, str]], index: int, negation_ends: list[int], post: str) -> bool:
    start, end, _ = spans[index]
    if _NOT_EXCLUDED_RE.search(clause):
        return False  # "pneumonia cannot be excluded" is uncertain, not negative
    if any(position <= start for position in negation_ends):  # "no X, Y or Z": NegEx scope to the clause end
        return True
    if _NEG_POST_RE.match(post.strip()) or _NEG_POST_RE.search(post[:30]):  # "X is not seen"
        return True
    if index + 1 < len(spans):
        # "X and Y are not seen": the predicate after the last finding of a plain list covers every item
        between = clause[end:spans[-1][0]]
        for other_start, other_end, _ in reversed(spans[index + 1:-1]):
            between = between[: other_start - end] + " " + between[other_end - end:]
        if re.fullmatch(r"[\s,]*(?:(?:and|or|nor)[\s,]+)?", between, re.IGNORECASE) and _NEG_POST_RE.match(clause[spans[-1][1]:].strip()):
            return True
    return False


def _severity(clause: str, pre: str, matched: str, post: str) -> tuple[str | None, str | None]:
    """(severity, change implied by "previously small, now moderate" or None)."""
    found = list(_SEVERITY_RE.finditer(pre[-30:])) or list(_SEVERITY_RE.finditer(matched))
    severity = normalise_severity(found[-1].group(1)) if found else None
    if severity is None:
        after = _SEVERITY_RE.search(post[:40])
        if after and not re.search(r"previous|prior|earlier", post[: after.start()]):
            severity = normalise_severity(after.group(1))  # "effusion is small"
    previously = re.search(rf"previously\s+({_SEVERITY_WORDS})", clause, re.IGNORECASE)
    now = re.search(rf"\bnow\s+(?:\w+\s+)?({_SEVERITY_WORDS})", clause, re.IGNORECASE)
    if previously and now:
        before, after = normalise_severity(previously.group(1)), normalise_severity(now.group(1))
        rank_before, rank_after = severity_rank(before), severity_rank(after)
        if rank_before is not None and rank_after is not None and rank_before != rank_after:
            return after, "increased" if rank_after > rank_before else "decreased"
        return after, None
    return severity, None


def _size_mm(text: str) -> float | None:
    """Largest dimension in mm of the sizes written in ``text`` ("1.2 x 1.5 cm" -> 15.0)."""
    size = None
    for match in _SIZE_RE.finditer(text):
        values = [float(v) for v in (match.group(1), match.group(2)) if v]
        value = max(values) * (10.0 if match.group(3).lower() == "cm" else 1.0)
        size = value if size is None else max(size, value)
    return size


def _device_change(change: str | None) -> str | None:
    # devices are placed / removed / repositioned; findings are new / resolved
    return {"resolved": "removed", "new": "placed", "increased": "repositioned", "decreased": "repositioned"}.get(change, change)


def _parse_clause(clause: str, sentence_index: int) -> list[Mention]:
    spans = _find_findings(clause)
    if not spans:
        return []
    negation_ends = [m.end() for m in _NEG_PRE_RE.finditer(clause)]
    uncertain_at = [m.start() for m in _UNCERTAIN_RE.finditer(clause)]
    clause_change = _change(clause, "")
    tail = clause[spans[-1][1]:]  # the predicate after the last finding ("A and B are unchanged")
    mentions: list[Mention] = []
    pres: list[str] = []
    for index, (start, end, label) in enumerate(spans):
        previous_end = spans[index - 1][1] if index else 0
        next_start = spans[index + 1][0] if index + 1 < len(spans) else len(clause)
        pre, post, matched = clause[previous_end:start], clause[end:next_start], clause[start:end]
        negated = _negated(clause, spans, index, negation_ends, post)
        change = _change(pre, post)
        if change is None and index + 1 < len(spans) and not re.search(r"\b(?:is|are|has|have|was|were)\b", post):
            change = _change("", tail)  # a list shares the predicate of its last item
        if change is None and (len(spans) == 1 or clause_change == "unchanged"):
            change = clause_change
        severity, implied = _severity(clause, pre, matched, post)
        change = implied or change
        if label in ("Cardiomegaly", "Enlarged Cardiomediastinum"):
            polarity = _anchor_polarity(label, pre, matched, post, negated, change)
            if polarity is None:
                continue  # "cardiac size cannot be evaluated", "stable cardiomediastinal silhouette": no statement
            negated = polarity
        uncertain = not negated and any(previous_end - 30 < position < end + 40 for position in uncertain_at)
        device = tip = None
        if label == "Support Devices":
            device = _device_name(matched)
            tip_match = _TIP_RE.search(post)
            tip = _tip_phrase(tip_match) if tip_match else None
            change = _device_change(change)
        elif change in ("placed", "removed", "repositioned"):
            change = {"placed": "new", "removed": "resolved", "repositioned": None}[change]
        if negated and change in ("new", "increased", "decreased"):
            change = None  # "no new effusion": a negated finding with a change word is simply absent
        pres.append(pre)
        mentions.append(Mention(
            finding=label, side=_side(pre, post, matched), location=_location(pre, post), severity=severity,
            negated=negated, uncertain=uncertain, change=change,
            size_mm=_size_mm(pre[-25:] + " " + matched + " " + post[:40]) if label == "Lung Lesion" else None,
            device=device, tip=tip, sentence=sentence_index, text=matched.lower(),
        ))
    return _merge_descriptions(mentions, pres)


def parse_report(text: str) -> ParsedReport:
    """Parse one section (findings or impression) into sentences and finding mentions."""
    sentences = split_sentences(text)
    mentions: list[Mention] = []
    understood: list[bool] = []
    for index, sentence in enumerate(sentences):
        found: list[Mention] = []
        for clause in _CLAUSE_SPLIT_RE.split(sentence):
            found.extend(_parse_clause(clause, index))
        mentions.extend(found)
        understood.append(bool(found) or bool(_UNDERSTOOD_RE.search(sentence)))
    return ParsedReport(sentences=sentences, understood=understood, mentions=mentions)
