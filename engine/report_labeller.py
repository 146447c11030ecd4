"""A keyword + negation labeller for the 18 CT-RATE findings in free-text chest CT reports.

This is a rule-based labeller — keyword patterns per finding plus NegEx-style negation — not upstream's RadBERT
report classifier; name it as such wherever its output is shown. It serves the app's report draft (which findings a
draft asserts or denies) and training (labels for reports, clinical precision/recall of generated reports).

How a sentence is read: lower-cased and split into clauses at `;` and at contrast words ("but", "however"…). Each
finding pattern that matches a clause is a *mention*; a mention is negated when
  * a negation cue ("no", "not", "without", "absence of"…) precedes it in the clause with no verb in between
    ("No pleural effusion or pneumothorax was detected" negates both nouns), or
  * the first verb group after it is negative ("Pericardial effusion-thickening was not observed",
    "… is within normal limits"), or
  * the match itself contains "no"/"not"/"without" ("the heart is not enlarged").
A few statements are explicitly normal ("heart contour, size are normal", "non-pathological lymph nodes") and count
as the finding mentioned and absent. Uncertain wording ("cannot be excluded", "possible") counts as present.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from engine.resources import ct_rate_labels

_W = r"(?:[\w,-]+\s+)"  # one word and the space after it
_CALC = r"(?:calcif\w*|atherom\w*|atherosclero\w*|plaques?)"
_VESSEL = (r"(?:aort\w*|(?<!coronary\s)(?<!descending\s)(?<!circumflex\s)arter(?:y|ies|ial)"
           r"|carotid\w*|subclavian|brachiocephalic|iliac|(?:vessel|vascular)\s+walls?)")
_CORONARY = r"(?:coronar\w*|left\s+anterior\s+descending|circumflex|lad|lcx|rca)\b"
_PREP = r"(?:in|of|on|at|along|involving|within|affecting)"

# Finding → patterns whose match is a mention (then checked for negation).
MENTIONS: dict[str, tuple[str, ...]] = {
    "Medical material": (
        r"\bmedical\s+(?:material|device)s?\b", r"\bpace\s?makers?\b", r"\b(?:defibrillator|icd)s?\b",
        r"\bcatheters?\b", r"\b(?:venous\s+)?port\b", r"\bstents?\b", r"\bsternotomy\b",
        r"\bsternal\s+(?:wires?|sutures?)",
        r"\b(?:surgical|metallic|vascular)\s+clips?\b", r"\bprosthe(?:sis|ses|tic)\b",
        r"\b(?:endotracheal|tracheostomy|nasogastric|chest|drainage|thoracostomy)\s+tubes?\b", r"\btracheostomy\b",
        r"\bvalve\s+replacement\b", r"\bembolization\s+coils?\b", r"\bimplants?\b", r"\bforeign\s+(?:body|material)\b",
        r"\bmetallic\s+(?:material|densit\w+|artifacts?)\b",
    ),
    "Arterial wall calcification": (
        rf"{_VESSEL}\s+{_W}{{0,3}}?{_CALC}",
        rf"{_CALC}\s+{_W}{{0,1}}{_VESSEL}",
        rf"{_CALC}\s+{_W}{{0,6}}?{_PREP}\s+{_W}{{0,5}}?{_VESSEL}",
    ),
    "Cardiomegaly": (
        r"\bcardiomegal\w*", r"\bcardiac\s+enlargement", r"\benlarge(?:d|ment\s+of\s+the)\s+(?:heart|cardiac)",
        r"\b(?:heart|cardiac\s+(?:silhouette|contour))\s+(?:(?:is|was|appears?|seems?)\s+)?(?:\w+\s+)?enlarged",
        r"\b(?:increased|enlarged)\s+(?:heart|cardiac)\s+(?:size|silhouette|dimensions?)",
        r"\b(?:heart|cardiac)\s+(?:size|dimensions?|silhouette)\s+(?:(?:is|was|are|were)\s+)?(?:\w+\s+)?"
        r"(?:increased|enlarged)",
        r"\bincreased\s+cardiothoracic\s+ratio",
    ),
    "Pericardial effusion": (
        r"\bpericardial\s+(?:[\w-]+\s+){0,2}?(?:effusions?|fluid)",
        r"\b(?:effusion|fluid)\s+(?:in|of|within)\s+the\s+pericardi\w*", r"\bhydropericardi\w*",
    ),
    "Coronary artery wall calcification": (
        rf"{_CORONARY}\s+{_W}{{0,3}}?{_CALC}",
        rf"{_CALC}\s+{_W}{{0,1}}{_CORONARY}",
        rf"{_CALC}\s+{_W}{{0,6}}?{_PREP}\s+{_W}{{0,5}}?{_CORONARY}",
    ),
    "Hiatal hernia": (
        r"\bhiat(?:al|us)\s+hernia\w*",
        rf"\bhernia\w*\s+{_W}{{0,2}}?(?:through|at|of)\s+the\s+(?:esophageal\s+)?hiatus",
        r"\bsliding\s+hernia",
    ),
    "Lymphadenopathy": (
        r"\b(?:lymph)?adenopath\w*",
        r"\b(?:enlarged|pathologic(?:al|ally)?(?:\s+enlarged)?)\s+(?:[\w-]+\s+){0,2}?(?:lymph\s+)?nodes?\b",
        r"\blymph\s+nodes?\s+(?:[\w,-]+\s+){0,10}?(?:pathologic\w*|enlarged|increased)\s+(?:size|dimensions?|sizes)",
        r"\blymph\s+nodes?\s+(?:(?:is|are|was|were)\s+)?(?:\w+\s+)?enlarged",
    ),
    "Emphysema": (r"(?<!subcutaneous\s)\bemphysema\w*",),
    "Atelectasis": (
        r"\batelecta\w*", r"\bfibroatelecta\w*", r"\b(?:lung|lobar|lobe|segmental)\s+collapse",
        r"\bcollapse\s+of\s+the\s+(?:\w+\s+){0,3}?(?:lobe|lung)",
    ),
    "Lung nodule": (r"\b(?:micro)?nodul\w*",),
    "Lung opacity": (
        r"\bground[\s-]?glass\b", r"\bopacit(?:y|ies)\b", r"\binfiltrat\w*",
        r"\b(?:increased|increase\s+in)\s+(?:\w+\s+)?(?:density|densities|attenuation)", r"\bdensity\s+increase\w*",
    ),
    "Pulmonary fibrotic sequela": (
        r"\bfibro(?:tic|sis)\b", r"\bfibroatelecta\w*", r"\bparenchymal\s+bands?\b",
        r"\bsequela\w*\s+(?:changes?|densit\w*|bands?|lesions?)",
    ),
    "Pleural effusion": (
        r"\bpleural\s+(?:[\w-]+\s+){0,2}?(?:effusions?|fluid)",
        r"\b(?:effusion|fluid)\s+(?:in|of|within)\s+the\s+(?:\w+\s+)?(?:pleural|hemithora\w*)", r"\bhydrothora\w*",
        r"(?<!pericardial\s)(?<!pericardial-)\beffusions?\b(?!\s+(?:in|of|within)\s+the\s+pericardi)",
    ),
    "Mosaic attenuation pattern": (r"\bmosaic\s+(?:attenuation|perfusion|pattern|oligemia)",),
    "Peribronchial thickening": (
        r"\bperibronch\w*\s+(?:[\w-]+\s+){0,2}?thicken\w*", r"\bbronchial\s+walls?\s+(?:[\w-]+\s+){0,2}?thicken\w*",
        r"\bthicken\w*\s+(?:of\s+)?(?:the\s+)?(?:peri)?bronchial\s+walls?", r"\bperibronchial\s+cuffing",
        r"\bbronchial\s+thickening",
    ),
    "Consolidation": (r"\bconsolidat\w*",),
    "Bronchiectasis": (r"\bbronchiecta\w*",),
    "Interlobular septal thickening": (
        r"(?<!ventricular\s)\b(?:interlobular\s+)?septal\s+(?:[\w-]+\s+)?thicken\w*",
        r"\bthicken\w*\s+(?:of\s+)?(?:the\s+)?(?:interlobular\s+)?septa\b",
        r"\binterlobular\s+sept\w*\s+(?:[\w-]+\s+){0,2}?thicken\w*",
        r"\bcrazy[\s-]?paving",
    ),
}

# Finding → statements that mention it as normal (absent); a mention overlapping one of these is dropped.
NORMALS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        r"\b(?:heart|cardiac)\s+(?:contour,?\s+(?:and\s+)?)?(?:size|dimensions?)(?:,?\s+(?:and\s+)?contours?)?\s+"
        r"(?:(?:is|are|was|were)\s+)?(?:within\s+)?normal",
        r"\bnormal\s+(?:heart|cardiac)\s+(?:size|dimensions?)", r"\bheart\s+(?:is\s+|was\s+)?of\s+normal\s+size",
    ),
    "Lymphadenopathy": (
        r"\b(?:non-?pathologic\w*|sub-?centimetric|normal[\s-]sized?)\s+(?:[\w-]+\s+){0,2}?(?:lymph\s+)?nodes?\b",
        r"\blymph\s+nodes?\s+(?:[\w,-]+\s+){0,10}?(?:non-?pathologic\w*|normal)\s+(?:size|dimensions?|sizes)",
        r"\blymph\s+nodes?\s+(?:is|are|was|were)\s+(?:within\s+normal\s+limits|normal)",
    ),
}

# Context that moves a lung word to another organ ("thyroid nodule", "fatty infiltration of the liver").
_OTHER_ORGAN = re.compile(r"\b(?:liver|hepat\w*|thyroid|adrenal|kidneys?|renal|spleen|splen\w*|pancrea\w*|breast|"
                          r"gallbladder|stomach|vertebra\w*|muscles?|bones?)\b")
_LUNG = re.compile(r"\b(?:lungs?|pulmonary|(?:upper|middle|lower)\s+lobes?|lingula\w*|subpleural|bronch\w*|"
                   r"fissur\w*)\b")
_LUNG_ONLY = {"Lung nodule", "Lung opacity"}

_CLAUSE_BREAK = re.compile(r";|\b(?:but|however|although|though|whereas|except|apart\s+from|aside\s+from|"
                           r"other\s+than)\b|,\s*(?=(?:and\s+)?there\b)|\band\s+(?=there\b)")
_PRE_CUE = re.compile(r"\b(?:no|not|without|absence\s+of|negative\s+for|free\s+of|neither|nor|never)\b")
_PSEUDO_CUE = re.compile(r"\b(?:no|not)\s+(?:significant\s+)?(?:interval\s+)?"
                         r"(?:change|increase|decrease|growth|only)\b")
_VERB = re.compile(r"\b(?:is|are|was|were|be|been|has|have|had|seen|noted|observed|detected|identified|shows?|showed|"
                   r"demonstrat\w*|appears?|appeared|reveal\w*|measur\w*)\b")
_PRE_SCOPE_END = re.compile(r"\band\s+the\b")
_POST_NEG = re.compile(
    r"(?:(?:is|are|was|were|has|have|had)(?:\s+been)?\s+)?(?:not|no\s+longer)\s+(?:\w+\s+)?(?:observed|seen|detected|"
    r"identified|present|found|noted|evident|demonstrated|visuali[sz]ed|appreciated|visible|apparent|shown|"
    r"recogni[sz]ed|enlarged)\b"
    r"|(?:(?:is|are|was|were|has|have|had)(?:\s+been)?\s+)?(?:absent|excluded|ruled\s+out|resolved|within\s+normal\s+limits)\b"
    r"|(?:is|are|was|were)\s+normal\b"
)
_IN_SPAN_NEG = re.compile(r"\b(?:no|not|without)\b")
_HEADER = re.compile(r"^\s*(?:findings|impressions?|conclusions?|comparison|technique|clinical\s+information)\s*:\s*",
                     re.IGNORECASE)
_ABBREVIATIONS = ("e.g.", "i.e.", "approx.", "vs.", "dr.", "no.", "fig.", "cf.", "etc.")


@dataclass(frozen=True)
class Mention:
    """One finding matched in a clause: where, and whether it was negated."""

    finding: str
    start: int
    end: int
    negated: bool


@lru_cache(maxsize=1)
def _compiled() -> tuple[dict[str, list[re.Pattern[str]]], dict[str, list[re.Pattern[str]]]]:
    names = set(ct_rate_labels())
    if set(MENTIONS) != names:
        raise RuntimeError(f"report labeller patterns do not cover the 18 findings: {sorted(names ^ set(MENTIONS))}")
    return ({k: [re.compile(p) for p in v] for k, v in MENTIONS.items()},
            {k: [re.compile(p) for p in v] for k, v in NORMALS.items()})


def split_sentences(text: str) -> list[str]:
    """Sentences of a report: split at . ! ? followed by space (not after decimals or common abbreviations) and at
    line breaks; section headers such as "Findings:" are dropped."""
    out: list[str] = []
    for line in re.split(r"[\r\n]+", text):
        line = _HEADER.sub("", line.strip())
        start = 0
        for m in re.finditer(r"[.!?]+(?=\s+\S|$)", line):
            words = line[start:m.end()].split()
            if words and words[-1].lstrip("([").lower() in _ABBREVIATIONS:
                continue
            piece = line[start:m.end()].strip()
            if piece:
                out.append(piece)
            start = m.end()
        tail = line[start:].strip()
        if tail:
            out.append(tail)
    return out


def _normalise(text: str) -> str:
    text = text.lower().replace("’", "'").replace("–", "-").replace("—", "-")
    return re.sub(r"\s+", " ", text).strip()


def _clauses(sentence: str) -> list[str]:
    parts, start = [], 0
    for m in _CLAUSE_BREAK.finditer(sentence):
        parts.append(sentence[start:m.start()])
        start = m.end()
    parts.append(sentence[start:])
    return [p for p in parts if p.strip()]


def _pre_negated(clause: str, start: int) -> bool:
    cues = [m for m in _PRE_CUE.finditer(clause, 0, start) if not _PSEUDO_CUE.match(clause, m.start())]
    if not cues:
        return False
    between = clause[cues[-1].end():start]
    return not (_VERB.search(between) or _PRE_SCOPE_END.search(between))


def _post_negated(clause: str, end: int) -> bool:
    neg = _POST_NEG.search(clause, end)
    if neg is None:
        return False
    verb = _VERB.search(clause, end)
    return verb is None or neg.start() <= verb.start()


def _mentions(clause: str) -> list[Mention]:
    mention_patterns, normal_patterns = _compiled()
    found = []
    for finding, patterns in mention_patterns.items():
        normals = [(m.start(), m.end()) for p in normal_patterns.get(finding, ()) for m in p.finditer(clause)]
        found += [Mention(finding, s, e, True) for s, e in normals]
        if finding in _LUNG_ONLY and _OTHER_ORGAN.search(clause) and not _LUNG.search(clause):
            continue
        for pattern in patterns:
            for m in pattern.finditer(clause):
                if any(m.start() < e and s < m.end() for s, e in normals):
                    continue
                negated = (_pre_negated(clause, m.start()) or _post_negated(clause, m.end())
                           or bool(_IN_SPAN_NEG.search(m.group())))
                found.append(Mention(finding, m.start(), m.end(), negated))
    return found


def label_sentence(text: str) -> dict[str, bool]:
    """Findings a sentence mentions: True = present (any affirmed mention), False = negated or stated normal."""
    labels: dict[str, bool] = {}
    for clause in _clauses(_normalise(text)):
        for m in _mentions(clause):
            labels[m.finding] = labels.get(m.finding, False) or not m.negated
    return labels


def label_report(text: str) -> dict[str, bool]:
    """All 18 CT-RATE findings in upstream order: True when some sentence affirms it; unmentioned = False."""
    labels = dict.fromkeys(ct_rate_labels(), False)
    for sentence in split_sentences(text):
        for finding, present in label_sentence(sentence).items():
            labels[finding] = labels[finding] or present
    return labels
