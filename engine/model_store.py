"""Where model weights live on this machine, whether they are intact, and what to do when one is missing.

The store is a plain folder (setting `--store`, else $CTDESK_MODEL_STORE, else the user's data dir) holding the
official files exactly as downloaded. ctdesk never downloads anything: for each missing file it says where users
normally obtain it. Each file's sha256 is recorded the first time it is seen (in `store.json`) and checked again
whenever its size or modification time changes, so a truncated copy or a swapped file is caught.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

_CTRATE = "the gated CT-RATE dataset on Hugging Face (ibrahimhamamci/CT-RATE; accept its CC BY-NC-SA 4.0 terms)"


@dataclass(frozen=True)
class KnownModel:
    key: str
    filename: str  # file or folder name inside the store
    role: str
    source: str


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("ctclip", "CT-CLIP_v2.pt", "CT-CLIP zero-shot findings and retrieval",
               f"{_CTRATE}: models/CT-CLIP-Related/CT-CLIP_v2.pt"),
    KnownModel("vocabfine", "CT_VocabFine_v2.pt", "CT-CLIP VocabFine (fine-tuned zero-shot findings)",
               f"{_CTRATE}: models/CT-CLIP-Related/CT_VocabFine_v2.pt"),
    KnownModel("classfine", "CT_LiPro_v2.pt", "CT-CLIP ClassFine (18 trained classifiers)",
               f"{_CTRATE}: models/CT-CLIP-Related/CT_LiPro_v2.pt"),
    KnownModel("cxr-bert", "BiomedVLP-CXR-BERT-specialized", "CT-CLIP's tokenizer (vocab.txt)",
               "microsoft/BiomedVLP-CXR-BERT-specialized on Hugging Face (MIT): copy the folder with vocab.txt"),
)


@dataclass(frozen=True)
class StoreEntry:
    model: KnownModel
    path: Path
    present: bool
    size_bytes: int = 0
    sha256: str = ""
    status: str = ""  # "ok", "recorded (first seen)", "CHANGED since recorded", "missing", "incomplete"


def default_store() -> Path:
    override = os.environ.get("CTDESK_MODEL_STORE")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("ctdesk")) / "models"


class ModelStore:
    """A folder of weights; `entries()` says what is there and whether it is intact."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_store()

    @property
    def cache_dir(self) -> Path:
        return self.root / ".cache"

    def path(self, key: str) -> Path:
        return self.root / _known(key).filename

    def has(self, key: str) -> bool:
        p = self.path(key)
        return p.is_dir() and (p / "vocab.txt").is_file() if key == "cxr-bert" else p.is_file()

    def entries(self, *, verify: bool = True) -> list[StoreEntry]:
        records = self._read_records()
        out = []
        for model in KNOWN_MODELS:
            p = self.root / model.filename
            if model.key == "cxr-bert":
                present = (p / "vocab.txt").is_file()
                status = "ok" if present else ("incomplete (no vocab.txt)" if p.exists() else "missing")
                out.append(StoreEntry(model, p, present, status=status))
                continue
            if not p.is_file():
                out.append(StoreEntry(model, p, False, status="missing"))
                continue
            stat = p.stat()
            rec = records.get(model.filename)
            unchanged = rec is not None and rec["size"] == stat.st_size and rec["mtime_ns"] == stat.st_mtime_ns
            if unchanged or not verify:
                sha = rec["sha256"] if rec else ""
                out.append(StoreEntry(model, p, True, stat.st_size, sha, "ok" if rec else "not yet verified"))
                continue
            sha = sha256_of(p)
            if rec is None:
                status = "recorded (first seen)"
            elif rec["sha256"] == sha:
                status = "ok"
            else:
                status = "CHANGED since recorded — the file differs from the one first installed"
            if rec is None or rec["sha256"] == sha:  # a changed file stays flagged until the user replaces it
                records[model.filename] = {"sha256": sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            out.append(StoreEntry(model, p, True, stat.st_size, sha, status))
        self._write_records(records)
        return out

    def _records_path(self) -> Path:
        return self.root / "store.json"

    def _read_records(self) -> dict[str, dict[str, object]]:
        try:
            return json.loads(self._records_path().read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def _write_records(self, records: dict[str, dict[str, object]]) -> None:
        if not records or not self.root.is_dir():
            return
        tmp = self._records_path().with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(records, indent=2), encoding="utf-8")
            os.replace(tmp, self._records_path())
        except OSError:
            pass  # a read-only store still works; hashes are just recomputed next time


def sha256_of(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _known(key: str) -> KnownModel:
    for m in KNOWN_MODELS:
        if m.key == key:
            return m
    raise KeyError(key)
