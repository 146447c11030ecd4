"""Teaching quiz: multiple-choice questions about the open study whose answer key is the AI model's own findings.

The model's probability for each finding is compared with its decision threshold (the model's thresholds file, else
0.5); the further away, the more confident the model. Questions use the most confident calls first: "which of these
does the model consider present?" (one confident positive among confident negatives), the converse, and, when a
study has too few calls of one kind, "present or absent?" for a single finding. Every explanation says that the key
comes from the AI model, with its probability — it teaches how to read the model, not the diagnosis.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

N_OPTIONS = 4


@dataclass(frozen=True)
class QuizQuestion:
    question: str
    options: tuple[str, ...]
    answer_index: int
    finding: str  # the finding the answer is about
    explanation: str


def make_quiz(probabilities: Mapping[str, float], thresholds: Mapping[str, float], n: int, *, model_name: str,
              demo: bool = False, labels: Sequence[str] | None = None, seed: str = "") -> list[QuizQuestion]:
    """Up to `n` questions over `labels` (default: every finding in `probabilities`), most confident calls first.

    `seed` (e.g. the study's content hash) makes the option order reproducible for one study.
    """
    names = [f for f in (labels if labels is not None else probabilities) if f in probabilities]
    if n <= 0 or not names:
        return []
    rng = random.Random(hashlib.blake2b(seed.encode(), digest_size=8).digest())
    threshold = {f: float(thresholds.get(f, 0.5)) for f in names}
    margin = {f: float(probabilities[f]) - threshold[f] for f in names}
    present = sorted((f for f in names if margin[f] >= 0), key=lambda f: -margin[f])
    absent = sorted((f for f in names if margin[f] < 0), key=lambda f: margin[f])
    source = f"the AI model {model_name}" + (" (a demo model trained on synthetic phantoms)" if demo else "")

    def why(finding: str) -> str:
        call = "present" if margin[finding] >= 0 else "absent"
        return (f"Answer key from {source}, not from a radiologist: it calls {finding} {call} with "
                f"P = {probabilities[finding]:.2f} (threshold {threshold[finding]:.2f}). Research use only — "
                "not for diagnostic use.")

    questions: list[QuizQuestion] = []
    used: set[str] = set()
    asked = {"present": 0, "absent": 0}

    def choice(kind: str) -> QuizQuestion | None:
        """One key of `kind` among N_OPTIONS − 1 confident calls of the other kind."""
        key_pool, other_pool = (present, absent) if kind == "present" else (absent, present)
        key = next((f for f in key_pool if f not in used), None)
        if key is None or len(other_pool) < N_OPTIONS - 1:
            return None
        start = asked[kind] * (N_OPTIONS - 1)  # later questions take the next distractors
        options = [key] + [other_pool[(start + i) % len(other_pool)] for i in range(N_OPTIONS - 1)]
        rng.shuffle(options)
        asked[kind] += 1
        return QuizQuestion(f"Which of these findings does the AI model consider {kind} in this study?",
                            tuple(options), options.index(key), key, why(key))

    def single() -> QuizQuestion | None:
        finding = next((f for f in sorted(names, key=lambda f: -abs(margin[f])) if f not in used), None)
        if finding is None:
            return None
        return QuizQuestion(f"According to the AI model, is {finding} present in this study?", ("Present", "Absent"),
                            0 if margin[finding] >= 0 else 1, finding, why(finding))

    for i in range(n):
        first, second = ("present", "absent") if i % 2 == 0 else ("absent", "present")
        question = choice(first) or choice(second) or single()
        if question is None:
            break
        used.add(question.finding)
        questions.append(question)
    return questions
