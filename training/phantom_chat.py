"""Chat training and test material from synthetic phantoms: CT-CLIP token grids + upstream-style VQA JSON, and the
held-out presence test run through the engine's own llama.cpp chat path.

Each phantom is painted (training.phantoms), encoded once by a CT-CLIP bundle exactly as the engine encodes a study
(engine.findings.FindingsModel → the quantised token grid the chat projector reads) and stored as upstream's
`<name>.npz` ("arr": (1, t, h, w, C)). Questions are rendered with the engine's GUI edits (engine.chat.prompts.
user_turn_texts): "<image>\\n<provided>Is there pleural effusion? <short_answer>" → "Yes." / "No.", one finding
per conversation, the 18 CT-RATE labels as ground truth. Report-generation conversations use REPORT_QUESTION, the
request behind the engine's report draft.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.chat.prompts import user_turn_texts
from engine.chat.service import REPORT_QUESTION
from engine.resources import ct_rate_labels
from training.data_chat import VQASample, save_image_tokens, write_vqa_json

YES, NO = "Yes.", "No."
PRESENCE_TEMPLATES = ("Is there {}?", "Does this scan show {}?", "Is {} present?")
Say = Callable[[str], None]


@dataclass(frozen=True)
class PhantomStudy:
    name: str  # image name in the VQA JSON (and <name>.npz in the image folder)
    seed: int
    labels: dict[str, int]  # CT-RATE label → 0/1
    report: str
    impression: str


def presence_question(label: str, template: str = PRESENCE_TEMPLATES[0]) -> str:
    return template.format(label.lower())


def _user_text(question: str, mode: str) -> str:
    """The first user turn exactly as the engine builds it at inference (image and task-token edits)."""
    return user_turn_texts([{"role": "user", "content": question, "mode": mode}], has_image=True)[0][1]


def encode_phantoms(ctclip_bundle: str | os.PathLike[str], folder: str | os.PathLike[str], seeds: Sequence[int], *,
                    shape: tuple[int, int, int] = (64, 128, 128), finding_rate: float = 0.3,
                    say: Say | None = None) -> list[PhantomStudy]:
    """Paint phantoms for `seeds` (each finding present with `finding_rate`, drawn from the seed), encode them with
    the CT-CLIP bundle and store the token grids in `folder`; already encoded ones are reused (resumable)."""
    import torch

    from engine.findings import FindingsModel
    from engine.models.loading import load_ctclip, resolve_spec
    from training.phantoms import FINDINGS, make_phantom

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(FINDINGS)
    model: FindingsModel | None = None
    studies = []
    t0 = time.perf_counter()
    for n, seed in enumerate(seeds):
        name = f"phantom_{seed:06d}"
        meta = folder / f"{name}.json"
        if not meta.is_file():
            if model is None:
                device = torch.device("cpu")
                model = FindingsModel(load_ctclip(resolve_spec(Path(ctclip_bundle)), device=device), device)
            rng = np.random.default_rng(seed)
            chosen = [k for k in keys if rng.random() < finding_rate]
            phantom = make_phantom(chosen, seed=seed, shape=shape)
            save_image_tokens(model.encode(phantom.volume).tokens, folder / f"{name}.npz")
            meta.write_text(json.dumps({"seed": seed, "findings": list(phantom.findings),
                                        "labels": phantom.label_dict(), "report": phantom.report,
                                        "impression": phantom.impression_text}, indent=1), encoding="utf-8")
            if say and (n + 1) % 20 == 0:
                say(f"encoded {n + 1}/{len(seeds)} phantoms ({time.perf_counter() - t0:.0f} s)")
        data = json.loads(meta.read_text(encoding="utf-8"))
        studies.append(PhantomStudy(f"{name}.npz", seed, {k: int(v) for k, v in data["labels"].items()},
                                    data["report"], data["impression"]))
    return studies


def report_samples(studies: Sequence[PhantomStudy], *, plain: bool = False,
                   target: str = "impression") -> list[VQASample]:
    """Stage 1 conversations: report generation. `plain`: upstream's pretraining shape (human turn = "<image>")."""
    out = []
    for s in studies:
        reply = s.impression if target == "impression" else s.report
        human = "<image>" if plain else _user_text(REPORT_QUESTION, "report_generation")
        out.append(VQASample(f"{s.name}-report", s.name, (("user", human), ("assistant", reply))))
    return out


def presence_samples(studies: Sequence[PhantomStudy], *, positives_per_study: int | None = None, seed: int = 0,
                     all_labels: bool = False) -> list[VQASample]:
    """Short-answer presence questions: the positive labels of a study (at most `positives_per_study`, drawn at
    random) and as many negatives (at least one), so "Yes." and "No." are about equally common; phrasings vary over
    PRESENCE_TEMPLATES. `all_labels`: all 18 questions per study, in label order (the held-out test)."""
    rng = np.random.default_rng(seed)
    names = list(ct_rate_labels())
    out = []
    for s in studies:
        pos = [n for n in names if s.labels.get(n)]
        neg = [n for n in names if not s.labels.get(n)]
        if not all_labels:
            if positives_per_study is not None and len(pos) > positives_per_study:
                pos = [pos[i] for i in sorted(rng.choice(len(pos), size=positives_per_study, replace=False))]
            k = min(len(neg), max(1, len(pos)))
            neg = [neg[i] for i in rng.choice(len(neg), size=k, replace=False)]
        for label in pos + neg:
            phrasing = 0 if all_labels else int(rng.integers(len(PRESENCE_TEMPLATES)))
            question = presence_question(label, PRESENCE_TEMPLATES[phrasing])
            answer = YES if s.labels.get(label) else NO
            out.append(VQASample(f"{s.name}-{label}", s.name,
                                 (("user", _user_text(question, "short_answer")), ("assistant", answer))))
    return out


def write_phantom_vqa(studies: Sequence[PhantomStudy], path: str | os.PathLike[str], **kwargs: Any) -> Path:
    return write_vqa_json(presence_samples(studies, **kwargs), path)


def parse_yes_no(text: str) -> bool | None:
    word = text.strip().lower().lstrip("*\"' ")
    if word.startswith("yes"):
        return True
    if word.startswith("no"):
        return False
    return None


def evaluate_presence(chat_bundle: str | os.PathLike[str], studies: Sequence[PhantomStudy],
                      image_folder: str | os.PathLike[str], *, threads: int | None = None,
                      say: Say | None = None) -> dict[str, Any]:
    """Ask every held-out study "Is there <label>?" for the 18 labels through engine.chat.service.ChatModel (the
    llama.cpp backend the app uses) and score the answers: accuracy, balanced accuracy, per label."""
    from engine.chat.service import ChatModel
    from training.data_chat import ImageTokenStore

    images = ImageTokenStore(image_folder, keep=2)
    rows = []
    t0 = time.perf_counter()
    with ChatModel(Path(chat_bundle), n_ctx=1024, n_threads=threads) as model:
        for n, s in enumerate(studies):
            tokens = images.load(s.name).numpy()
            for label in ct_rate_labels():
                reply = model.answer(tokens, presence_question(label), "short_answer", max_new_tokens=4)
                rows.append({"study": s.name, "label": label, "truth": bool(s.labels.get(label)),
                             "answer": reply.text, "said_yes": parse_yes_no(reply.text)})
            if say and (n + 1) % 10 == 0:
                say(f"asked {n + 1}/{len(studies)} studies ({time.perf_counter() - t0:.0f} s)")
    return score_presence(rows) | {"seconds": time.perf_counter() - t0, "answers": rows}


def score_presence(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (unparseable answers count as wrong), balanced accuracy, and per-label accuracy."""
    truth = np.array([r["truth"] for r in rows], dtype=bool)
    said = np.array([bool(r["said_yes"]) for r in rows], dtype=bool)
    valid = np.array([r["said_yes"] is not None for r in rows], dtype=bool)
    correct = (truth == said) & valid
    sens = float(correct[truth].mean()) if truth.any() else float("nan")
    spec = float(correct[~truth].mean()) if (~truth).any() else float("nan")
    per_label = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        m = np.array([r["label"] == label for r in rows])
        per_label[label] = {"accuracy": float(correct[m].mean()), "positives": int(truth[m].sum()), "n": int(m.sum())}
    return {"n": len(rows), "accuracy": float(correct.mean()), "balanced_accuracy": (sens + spec) / 2,
            "sensitivity": sens, "specificity": spec, "majority_baseline": float(max(truth.mean(), 1 - truth.mean())),
            "unparsed": int((~valid).sum()), "per_label": per_label}
