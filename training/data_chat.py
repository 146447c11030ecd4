"""CT-CHAT training data: upstream's VQA JSON (LLaVA conversations) → token ids + labels, with the image's place.

Upstream (`llava/train/train.py` of CT-CHAT @ 33c9b97) reads a JSON list of ``{"id", "image": "train_1_a_1.nii.gz",
"conversations": [{"from": "human", "value": "<image>\\n<provided>… <short_answer>"}, {"from": "gpt", "value": "…"},
…]}`` and loads the pre-encoded CT-ViT tokens of each image from
``<image_folder>/<name>.npz`` (key "arr", shape (1, 24, 24, 24, 512)). The human text already carries the task
token and `<provided>`; "<image>" is moved to the front of its turn (`preprocess_multimodal`). Here each
conversation is rendered with the same function inference uses (engine.chat.prompts.render_model_prompt), so a
model is trained on exactly the string it later reads; the loss covers each assistant reply up to and including
its end-of-turn text. Stage 1 may use upstream's "plain" format instead: ``<image>`` + reply + "\\n".
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.chat.prompts import IMAGE_PLACEHOLDER, LLAMA3_STOP, render_model_prompt
from engine.errors import EngineError

IMAGE_INDEX = -200  # upstream's IMAGE_TOKEN_INDEX: where the projected image rows go
IGNORE_INDEX = -100
PLAIN_SEP = "\n"  # conv_llava_plain's separator, appended to the reply
_ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


class VQADataError(EngineError):
    """A VQA file (or an image it names) is not in the format CT-CHAT's training reads."""


@dataclass(frozen=True)
class VQASample:
    id: str
    image: str | None  # file name as written in the JSON (upstream writes the .nii.gz name)
    turns: tuple[tuple[str, str], ...]  # ("user" | "assistant", text), "<image>" at the front of its turn


def read_vqa_json(path: str | os.PathLike[str]) -> list[VQASample]:
    """Samples of an upstream-style VQA JSON; a leading assistant turn is skipped (as upstream), trailing user
    turns without a reply are dropped, and a conversation with no reply is refused."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise VQADataError(f"VQA file {path} does not exist.") from exc
    except (OSError, ValueError) as exc:
        raise VQADataError(f"{path.name} is not readable JSON ({exc}).") from exc
    if not isinstance(data, list):
        raise VQADataError(f"{path.name} must hold a JSON list of conversations, not a {type(data).__name__}.")
    return [_sample(item, i, path.name) for i, item in enumerate(data)]


def _sample(item: Any, index: int, source: str) -> VQASample:
    where = f"{source} entry {index}"
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
        raise VQADataError(f"{where} has no \"conversations\" list.")
    turns: list[tuple[str, str]] = []
    for turn in item["conversations"]:
        if not isinstance(turn, dict) or turn.get("from") not in _ROLES or not isinstance(turn.get("value"), str):
            raise VQADataError(f"{where}: every turn needs \"from\" (human/gpt) and a text \"value\".")
        turns.append((_ROLES[turn["from"]], turn["value"]))
    if turns and turns[0][0] == "assistant":
        turns = turns[1:]
    while turns and turns[-1][0] == "user":
        turns.pop()
    for i, (role, _) in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise VQADataError(f"{where}: turns must alternate human/gpt.")
    if not turns:
        raise VQADataError(f"{where} has no answered question.")
    image = item.get("image")
    if image is not None and not isinstance(image, str):
        raise VQADataError(f"{where}: \"image\" must be a file name.")
    if image is not None:
        turns = _image_first(turns, where)
    elif any(IMAGE_PLACEHOLDER in t for _, t in turns):
        raise VQADataError(f"{where} mentions {IMAGE_PLACEHOLDER} but names no image.")
    return VQASample(str(item.get("id", index)), image, tuple(turns))


def _image_first(turns: list[tuple[str, str]], where: str) -> list[tuple[str, str]]:
    """Upstream's preprocess_multimodal: in the turn holding "<image>", move it to the front followed by "\\n"."""
    holders = [i for i, (_, t) in enumerate(turns) if IMAGE_PLACEHOLDER in t]
    if len(holders) != 1 or turns[holders[0]][0] != "user" or turns[holders[0]][1].count(IMAGE_PLACEHOLDER) != 1:
        raise VQADataError(f"{where}: exactly one human turn must contain {IMAGE_PLACEHOLDER} once.")
    i = holders[0]
    text = turns[i][1].replace(IMAGE_PLACEHOLDER, "").strip()
    return turns[:i] + [("user", IMAGE_PLACEHOLDER + "\n" + text)] + turns[i + 1:]


def write_vqa_json(samples: Sequence[VQASample], path: str | os.PathLike[str]) -> Path:
    """The inverse of `read_vqa_json` (human/gpt roles), written atomically."""
    path = Path(path)
    items = []
    for s in samples:
        item: dict[str, Any] = {"id": s.id}
        if s.image is not None:
            item["image"] = s.image
        item["conversations"] = [{"from": "human" if r == "user" else "gpt", "value": t} for r, t in s.turns]
        items.append(item)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(items, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


# --- prompt format -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatFormat:
    """How one model reads a conversation: prompt family, its template and special texts, BOS policy."""

    family: str
    chat_template: str | None = None
    bos_text: str = ""
    eos_text: str = ""
    tokenizer_adds_bos: bool = False

    @property
    def add_bos(self) -> bool:
        """BOS in front: always for upstream's Llama 3 input (two BOS, a quirk kept), else the tokenizer's habit."""
        return self.family == "llama3" or self.tokenizer_adds_bos

    @property
    def stop_text(self) -> str:
        """The text that ends a reply; the loss includes it, so the model learns to stop."""
        if self.family == "llama3":
            return LLAMA3_STOP
        if self.family == "chat_template":
            return self.eos_text
        return "</s>"

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, family: str) -> ChatFormat:
        probe = tokenizer("a")["input_ids"]
        adds_bos = tokenizer.bos_token_id is not None and len(probe) > 0 and probe[0] == tokenizer.bos_token_id
        template = getattr(tokenizer, "chat_template", None)
        return cls(family, template if isinstance(template, str) else None, tokenizer.bos_token or "",
                   tokenizer.eos_token or "", adds_bos)

    def render(self, turns: Sequence[tuple[str, str]], *, add_generation_prompt: bool) -> str:
        return render_model_prompt(turns, self.family, chat_template=self.chat_template, bos_text=self.bos_text,
                                   eos_text=self.eos_text, tokenizer_adds_bos=self.tokenizer_adds_bos,
                                   add_generation_prompt=add_generation_prompt)


def conversation_segments(turns: Sequence[tuple[str, str]], fmt: ChatFormat, *,
                          plain: bool = False) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_target) pieces; targets are the replies through their stop text."""
    if plain:  # upstream preprocess_plain: only the image, then the (single) reply and the separator
        if len(turns) != 2:
            raise VQADataError("The plain (stage 1) format takes one question and one answer per conversation.")
        return [(IMAGE_PLACEHOLDER if IMAGE_PLACEHOLDER in turns[0][1] else "", False),
                (turns[1][1] + PLAIN_SEP, True)]
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        before = fmt.render(turns[:i], add_generation_prompt=True)
        full = fmt.render(turns[:i + 1], add_generation_prompt=False)
        if not before.startswith(done) or not full.startswith(before):
            raise VQADataError(f"The {fmt.family} template does not render conversations incrementally; "
                               "replies cannot be located for the loss.")
        segments.append((before[len(done):], False))
        reply = full[len(before):]
        cut = reply.find(fmt.stop_text) if fmt.stop_text else -1
        end = len(reply) if cut < 0 else cut + len(fmt.stop_text)
        segments.append((reply[:end], True))
        if reply[end:]:
            segments.append((reply[end:], False))
        done = full
    return [(t, target) for t, target in segments if t]


@dataclass(frozen=True)
class EncodedSample:
    ids: list[int]  # token ids, IMAGE_INDEX where the image rows go
    labels: list[int]  # target id or IGNORE_INDEX, same length


def encode_sample(sample: VQASample, tokenizer: Any, fmt: ChatFormat, *, plain: bool = False,
                  max_length: int | None = None) -> EncodedSample:
    """Token ids and labels; each text piece is tokenised alone, as the llama.cpp backend does around the image."""
    ids: list[int] = [tokenizer.bos_token_id] if fmt.add_bos and tokenizer.bos_token_id is not None else []
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    for text, target in conversation_segments(sample.turns, fmt, plain=plain):
        parts = text.split(IMAGE_PLACEHOLDER) if not target else [text]
        for n, part in enumerate(parts):
            if n > 0:
                ids.append(IMAGE_INDEX)
                labels.append(IGNORE_INDEX)
            piece = tokenizer(part, add_special_tokens=False)["input_ids"] if part else []
            ids.extend(piece)
            labels.extend(piece if target else [IGNORE_INDEX] * len(piece))
    if (IMAGE_INDEX in ids) != (sample.image is not None):
        raise VQADataError(f"Sample {sample.id}: the image and the {IMAGE_PLACEHOLDER} marker do not match.")
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return EncodedSample(ids, labels)


# --- images --------------------------------------------------------------------------------------------------------
class ImageTokenStore:
    """Pre-encoded CT-ViT tokens by the image name in the JSON: `<folder>/<stem>.npz` (key "arr", upstream's
    encode_script output) — ".nii.gz" is replaced by ".npz" as upstream does. A few are kept in memory."""

    def __init__(self, folder: str | os.PathLike[str], *, keep: int = 64) -> None:
        self.folder = Path(folder)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._keep = keep

    def path(self, name: str) -> Path:
        stem = name.removesuffix(".nii.gz").removesuffix(".nii").removesuffix(".npz")
        return self.folder / f"{stem}.npz"

    def load(self, name: str) -> torch.Tensor:
        """(N, C) float32 tokens, N = t·h·w in upstream's flatten(1, 3) order."""
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        path = self.path(name)
        try:
            with np.load(path) as npz:
                arr = np.asarray(npz["arr"], dtype=np.float32)
        except FileNotFoundError as exc:
            raise VQADataError(f"Image tokens {path} are missing (encode the volume first).") from exc
        except (OSError, ValueError, KeyError) as exc:
            raise VQADataError(f"{path.name} is not an encoded image (npz with \"arr\"): {exc}") from exc
        if arr.ndim < 2:
            raise VQADataError(f"{path.name} holds an array of shape {arr.shape}, not a token grid.")
        tokens = torch.from_numpy(arr.reshape(-1, arr.shape[-1]))
        self._cache[name] = tokens
        while len(self._cache) > self._keep:
            self._cache.popitem(last=False)
        return tokens


def save_image_tokens(tokens: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a (t, h, w, C) token grid as upstream's encode_script does: npz with "arr" of shape (1, t, h, w, C)."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, arr=np.asarray(tokens, dtype=np.float32)[None])
    os.replace(tmp, path)
    return path


class ChatDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Encoded samples (tokenised once) with their image tokens loaded on demand."""

    def __init__(self, samples: Sequence[VQASample], tokenizer: Any, fmt: ChatFormat,
                 images: ImageTokenStore | None, *, plain: bool = False, max_length: int | None = None) -> None:
        self.samples = list(samples)
        self.encoded = [encode_sample(s, tokenizer, fmt, plain=plain, max_length=max_length) for s in self.samples]
        self.images = images
        if images is None and any(s.image for s in self.samples):
            raise VQADataError("These conversations name images but no image folder was given.")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample, enc = self.samples[i], self.encoded[i]
        image = self.images.load(sample.image) if (self.images is not None and sample.image) else None
        return {"ids": enc.ids, "labels": enc.labels, "image": image}


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ids (pad_id) and labels (IGNORE_INDEX); images stacked, zeros where a sample has none."""
    width = max(len(it["ids"]) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    for b, it in enumerate(items):
        ids[b, :len(it["ids"])] = torch.tensor(it["ids"], dtype=torch.long)
        labels[b, :len(it["labels"])] = torch.tensor(it["labels"], dtype=torch.long)
    shapes = {tuple(it["image"].shape) for it in items if it["image"] is not None}
    if len(shapes) > 1:
        raise VQADataError(f"Images of one batch have different token grids: {sorted(shapes)}.")
    batch = {"ids": ids, "labels": labels}
    if shapes:
        shape = shapes.pop()
        batch["images"] = torch.stack([it["image"] if it["image"] is not None else torch.zeros(shape)
                                       for it in items])
    return batch
