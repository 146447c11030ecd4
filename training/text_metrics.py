"""Report-generation metrics: BLEU-1…4, METEOR, ROUGE-L, CIDEr-D, and clinical precision/recall/F1.

What each number is (so it can be compared with papers):
* BLEU-n, ROUGE-L, CIDEr-D: the coco-caption implementations (`pycocoevalcap` — what R2Gen/CT2Rep-style report
  papers report): corpus BLEU with the closest reference length; ROUGE-L F-measure with β = 1.2, averaged over
  reports; CIDEr-D (n = 1…4, σ = 6, clipped, ×10) with document frequencies from the references of the evaluated
  set — CIDEr needs a corpus: a single report scores 0. Text is lower-cased and punctuation removed first (what
  coco-caption's Java PTBTokenizer produces; no Java is run here).
* METEOR: nltk's `meteor_score` (exact → Porter stem → WordNet synonym matching; α = 0.9, β = 3, γ = 0.5), averaged
  over reports. nltk's WordNet data is a run-time download and PyPI carries no offline copy, so the synonyms are
  WordNet 3.0 synsets as Meteor 1.5 ships them (`synonym/english.synsets`, `english.exceptions` inside the
  `meteor-1.5.jar` of pycocoevalcap, read as data, no Java), with WordNet's morphological rules. If that jar is
  missing, synonym matching is skipped and the output says so (`meteor_variant`). This is not the Java Meteor 1.5
  score (which adds paraphrase tables and other parameters).
* Clinical P/R/F1: the 18 CT-RATE findings read from generated and reference reports by the keyword + negation
  labeller (`engine.report_labeller`, a rule-based labeller), micro-averaged and per finding.
"""

from __future__ import annotations

import csv
import json
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.report_labeller import label_report
from engine.resources import ct_rate_labels

METEOR_WITH_SYNONYMS = ("nltk METEOR (exact, Porter stem, WordNet 3.0 synonyms from Meteor 1.5's data; "
                        "alpha 0.9, beta 3, gamma 0.5)")
METEOR_WITHOUT_SYNONYMS = ("nltk METEOR (exact and Porter stem only: no WordNet synonym data found; "
                           "alpha 0.9, beta 3, gamma 0.5)")
_TOKEN = re.compile(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*")
# WordNet's detachment rules (morphy), pooled over parts of speech as Meteor's synonym file is.
_MORPHY_RULES = (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                 ("men", "man"), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
                 ("ing", ""), ("er", ""), ("est", ""), ("er", "e"), ("est", "e"))


class ReportFileError(EngineError):
    """A generated/reference report file cannot be read or paired."""


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without punctuation; decimals ("3.5"), hyphenated and apostrophe words kept whole."""
    return _TOKEN.findall(text.lower())


# --- METEOR's synonym data -----------------------------------------------------------------------------------------
class _Lemma:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class _Synset:
    __slots__ = ("_words",)

    def __init__(self, words: Iterable[str]) -> None:
        self._words = tuple(words)

    def lemmas(self) -> list[_Lemma]:
        return [_Lemma(w) for w in self._words]


class MeteorSynonyms:
    """WordNet 3.0 synsets from Meteor 1.5's data files, answering the one call nltk's METEOR makes: `synsets(w)`."""

    def __init__(self, synsets_text: str, exceptions_text: str) -> None:
        lines = synsets_text.splitlines()
        self.word_synsets: dict[str, tuple[str, ...]] = {}
        self.synset_words: dict[str, list[str]] = {}
        for word, ids in zip(lines[0::2], lines[1::2], strict=False):
            self.word_synsets[word] = tuple(ids.split())
            for i in self.word_synsets[word]:
                self.synset_words.setdefault(i, []).append(word)
        ex = exceptions_text.splitlines()
        self.base_forms: dict[str, list[str]] = {}
        for base, inflected in zip(ex[0::2], ex[1::2], strict=False):
            for form in inflected.split():
                self.base_forms.setdefault(form, []).append(base)

    @classmethod
    def from_jar(cls, jar: Path) -> MeteorSynonyms:
        with zipfile.ZipFile(jar) as z:
            return cls(z.read("synonym/english.synsets").decode("utf-8"),
                       z.read("synonym/english.exceptions").decode("utf-8"))

    def lemma_forms(self, word: str) -> list[str]:
        """Dictionary forms of `word` (WordNet morphy: irregular exceptions, else suffix rules)."""
        if word in self.base_forms:
            candidates = [word, *self.base_forms[word]]
        else:
            candidates = [word] + [word[: -len(old)] + new for old, new in _MORPHY_RULES if word.endswith(old)]
        return [c for c in dict.fromkeys(candidates) if c in self.word_synsets]

    def synsets(self, word: str) -> list[_Synset]:
        ids = dict.fromkeys(i for form in self.lemma_forms(word) for i in self.word_synsets[form])
        return [_Synset(self.synset_words[i]) for i in ids]


class _NoSynonyms:
    def synsets(self, word: str) -> list[_Synset]:
        return []


@lru_cache(maxsize=1)
def meteor_synonyms() -> tuple[Any, str]:
    """(synonym source for nltk's METEOR, the variant's description)."""
    try:
        import pycocoevalcap
    except ImportError:
        return _NoSynonyms(), METEOR_WITHOUT_SYNONYMS
    jar = Path(pycocoevalcap.__path__[0]) / "meteor" / "meteor-1.5.jar"
    try:
        return MeteorSynonyms.from_jar(jar), METEOR_WITH_SYNONYMS
    except (OSError, KeyError, zipfile.BadZipFile):
        return _NoSynonyms(), METEOR_WITHOUT_SYNONYMS


# --- language metrics ----------------------------------------------------------------------------------------------
def language_metrics(generated: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, Any]:
    """BLEU-1…4, METEOR, ROUGE-L and CIDEr-D of `generated[i]` against `references[i]` (one text or several)."""
    try:
        from nltk.stem.porter import PorterStemmer
        from nltk.translate.meteor_score import meteor_score
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as exc:
        from engine.errors import MissingDependency

        raise MissingDependency("Report metrics need pycocoevalcap and nltk: pip install 'ctdesk[train]'") from exc
    if len(generated) != len(references) or not generated:
        raise ValueError(f"need one generated report per reference, got {len(generated)} and {len(references)}")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    res = {i: [" ".join(tokenize(g))] for i, g in enumerate(generated)}
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    synonyms, variant = meteor_synonyms()
    stemmer = PorterStemmer()
    meteors = [meteor_score([tokenize(r) for r in rs], tokenize(g), stemmer=stemmer, wordnet=synonyms)
               if tokenize(g) else 0.0 for g, rs in zip(generated, refs, strict=True)]
    return {"bleu_1": float(bleu[0]), "bleu_2": float(bleu[1]), "bleu_3": float(bleu[2]), "bleu_4": float(bleu[3]),
            "meteor": sum(meteors) / len(meteors), "rouge_l": float(rouge), "cider": float(cider),
            "meteor_variant": variant, "reports": len(generated)}


# --- clinical metrics ----------------------------------------------------------------------------------------------
def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def clinical_metrics(generated: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Precision/recall/F1 of the findings generated reports assert, against those the references assert.

    Labels come from the keyword + negation labeller; micro-averaged over all (report, finding) pairs, per finding
    (0 where undefined), and the macro F1 over findings present in some reference.
    """
    if len(generated) != len(references):
        raise ValueError(f"need one generated report per reference, got {len(generated)} and {len(references)}")
    names = ct_rate_labels()
    counts = {n: {"tp": 0, "fp": 0, "fn": 0, "support": 0} for n in names}
    for g, r in zip(generated, references, strict=True):
        lg, lr = label_report(g), label_report(r)
        for n in names:
            c = counts[n]
            c["tp"] += lg[n] and lr[n]
            c["fp"] += lg[n] and not lr[n]
            c["fn"] += lr[n] and not lg[n]
            c["support"] += lr[n]
    per = {n: {**_prf(c["tp"], c["fp"], c["fn"]), **c} for n, c in counts.items()}
    micro = _prf(*(sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn")))
    supported = [per[n]["f1"] for n in names if counts[n]["support"]]
    return {"micro": micro, "macro_f1": sum(supported) / len(supported) if supported else 0.0, "per_finding": per,
            "labeller": "keyword + negation labeller (engine.report_labeller), not RadBERT"}


# --- files ---------------------------------------------------------------------------------------------------------
ID_KEYS = ("id", "VolumeName", "volume", "name", "study")
TEXT_KEYS = ("report", "text", "generated", "reference", "findings", "Findings_EN")


def read_reports(path: str | Path, field: str | None = None) -> dict[str, str]:
    """Reports by id from JSON ({id: text} or a list of objects) or CSV (an id column and a text column).

    Ids are matched without a `.nii.gz`/`.nii` suffix; the text field is `field` or the first of TEXT_KEYS present.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows: list[Mapping[str, Any]] = ([{"id": k, "text": v} for k, v in data.items()]
                                             if isinstance(data, dict) else list(data))
        else:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise ReportFileError(f"Cannot read reports from {path} ({exc}).") from exc
    if not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ReportFileError(f"{path} holds no report records (expected {{id: text}} or objects with an id).")
    keys = set(rows[0])
    id_key = next((k for k in ID_KEYS if k in keys), None)
    text_key = field if field in keys else None if field else next((k for k in TEXT_KEYS if k in keys), None)
    if id_key is None or text_key is None:
        raise ReportFileError(f"{path}: need an id field ({', '.join(ID_KEYS)}) and a text field "
                              f"({field or ', '.join(TEXT_KEYS)}); found {', '.join(sorted(keys))}.")
    return {str(r[id_key]).removesuffix(".gz").removesuffix(".nii"): str(r.get(text_key) or "") for r in rows}


def evaluate_reports(generated_file: str | Path, reference_file: str | Path, *, out: str | Path | None = None,
                     field: str | None = None, reference_field: str | None = None) -> dict[str, Any]:
    """Pair reports by id, compute language and clinical metrics, optionally write them as JSON."""
    gen = read_reports(generated_file, field)
    ref = read_reports(reference_file, reference_field)
    ids = sorted(set(gen) & set(ref))
    if not ids:
        raise ReportFileError(f"No report id is in both {generated_file} and {reference_file}.")
    result = {
        "reports": len(ids),
        "unpaired_generated": len(set(gen) - set(ref)), "unpaired_reference": len(set(ref) - set(gen)),
        "language": language_metrics([gen[i] for i in ids], [ref[i] for i in ids]),
        "clinical": clinical_metrics([gen[i] for i in ids], [ref[i] for i in ids]),
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
