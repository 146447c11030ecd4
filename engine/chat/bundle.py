"""A chat model bundle: the folder `ctdesk convert-chat` (and the demo pack) writes and the chat backends read.

    <folder>/ctdesk_chat.json      {"name", "gguf", "projector", "family", "n_embd", "demo", "label", "source"}
    <folder>/<name>.<quant>.gguf   the LLM (merged LoRA, CT-CHAT's added tokens), for llama.cpp
    <folder>/projector.safetensors the CT-CHAT projector (bare keys: attn_pool.*, ln.*, proj.*)

`family` is a prompt family of engine.chat.prompts ("llama3", "mistral_instruct", "vicuna_v1") or "chat_template"
(use the GGUF's own chat template with CT-CHAT's guardrail, e.g. the demo's SmolLM2).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.errors import CheckpointMismatch

CHAT_MANIFEST = "ctdesk_chat.json"
PROMPT_FAMILIES = ("llama3", "mistral_instruct", "vicuna_v1", "chat_template")


@dataclass(frozen=True)
class ChatBundle:
    folder: Path
    name: str
    gguf: str  # file name inside `folder`
    projector: str  # file name inside `folder`
    family: str
    n_embd: int
    demo: bool = False
    label: str = ""
    source: str = ""  # what it was converted from (base model, LoRA folder)

    @property
    def gguf_path(self) -> Path:
        return self.folder / self.gguf

    @property
    def projector_path(self) -> Path:
        return self.folder / self.projector

    def save(self) -> Path:
        data = {k: v for k, v in asdict(self).items() if k != "folder"}
        tmp = self.folder / (CHAT_MANIFEST + ".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, self.folder / CHAT_MANIFEST)
        return self.folder / CHAT_MANIFEST


def read_chat_bundle(folder: str | os.PathLike[str]) -> ChatBundle:
    folder = Path(folder)
    path = folder / CHAT_MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        bundle = ChatBundle(folder=folder, name=str(data["name"]), gguf=str(data["gguf"]),
                            projector=str(data["projector"]), family=str(data["family"]),
                            n_embd=int(data["n_embd"]), demo=bool(data.get("demo", False)),
                            label=str(data.get("label", "")), source=str(data.get("source", "")))
    except FileNotFoundError as exc:
        raise CheckpointMismatch(f"{folder} is not a chat model bundle (no {CHAT_MANIFEST}).") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointMismatch(f"{path} is not a valid chat model manifest ({exc}).") from exc
    if bundle.family not in PROMPT_FAMILIES:
        raise CheckpointMismatch(f"{path}: unknown prompt family {bundle.family!r} (expected {PROMPT_FAMILIES}).")
    for f in (bundle.gguf_path, bundle.projector_path):
        if not f.is_file():
            raise CheckpointMismatch(f"The chat bundle {folder.name} is incomplete: {f.name} is missing.")
    return bundle
