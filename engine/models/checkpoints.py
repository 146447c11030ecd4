"""Read official CT-CLIP weight files unchanged: detect their format, drop dead keys, load strictly, explain mismatches.

One readable sequence (as open_clip's `load_checkpoint`): read (`torch.load(weights_only=True)` — a pickle that
needs code execution is refused — or safetensors) → unwrap → detect the format by sentinel keys (v2 CT-CLIP or
VocabFine, ClassFine with its `trained_model.` prefix, v1, foreign files) → drop the keys upstream saves but never
uses → `load_state_dict(strict=True)`, with missing/unexpected keys turned into a `CheckpointMismatch` that names
the likely cause. Large `.pt` files are converted once to a safetensors cache of the live keys only (0.75 GB of
the 1.77 GB), which later loads memory-mapped in a fraction of the time.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.errors import CheckpointMismatch

# Keys upstream checkpoints carry that no inference path reads (listed by name; see upstream_models.md §a, §b, §e).
DEAD_KEY_PREFIXES: tuple[str, ...] = (
    "to_text_latent_extra.",  # extra_latent_projection=False: deep copies, never used (604 MB)
    "to_visual_latent_extra.",
    "text_transformer.embeddings.position_ids",  # a buffer in transformers < 4.31 only
    "visual_transformer.to_patch_emb_first_frame.",  # its call is commented out upstream
    "visual_transformer.to_pixels.",  # decoder heads
    "visual_transformer.to_pixels_first_frame.",
)
CLASSFINE_PREFIX = "trained_model."
V1_VISUAL_LATENT_WIDTH = 2_097_152  # v1 flattened (t, h, w, d) = 16·16·16·512


@dataclass(frozen=True)
class CheckpointInfo:
    """What a weights file turned out to be."""

    kind: str  # "ctclip" (zero-shot or VocabFine — same layout) or "classfine"
    num_classes: int = 0  # ClassFine only


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors from a `.pt`/`.pth`/`.bin` (weights only) or `.safetensors` file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatch(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointMismatch(f"{path.name} is not a readable safetensors file ({exc}).") from exc
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu", mmap=_is_zip_pickle(path))
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a refused class: simply not a pickle (e.g. "invalid load key")
            raise CheckpointMismatch(
                f"{path.name} is not a readable PyTorch weights file (not a weights pickle).") from exc
        raise CheckpointMismatch(
            f"{path.name} contains Python objects that would need code execution to load; ctdesk only loads plain "
            "weights. Re-save it as a state dict (or safetensors) with a trusted copy of the original code."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointMismatch(f"{path.name} is not a readable PyTorch weights file ({_first_line(exc)}).") from exc
    return _unwrap(obj, path)


def identify(state: dict[str, torch.Tensor], name: str) -> CheckpointInfo:
    """Tell the layout from sentinel keys, or refuse with the likely cause."""
    if any(k.startswith(CLASSFINE_PREFIX) for k in state):
        weight = state.get("classifier.weight")
        if weight is None:
            raise CheckpointMismatch(f"{name} has `trained_model.` keys but no `classifier.weight`: not ClassFine.")
        return CheckpointInfo("classfine", int(weight.shape[0]))
    latent = state.get("to_visual_latent.weight")
    if latent is None or not any(k.startswith("visual_transformer.") for k in state):
        sample = ", ".join(sorted(state)[:3])
        raise CheckpointMismatch(f"{name} is not a CT-CLIP checkpoint (its keys look like: {sample}…).")
    if latent.shape[-1] == V1_VISUAL_LATENT_WIDTH:
        raise CheckpointMismatch(
            f"{name} is a v1 CT-CLIP checkpoint (May 2024; patch 30, no slice-mean pooling). ctdesk runs v2: use "
            "CT-CLIP_v2.pt, CT_VocabFine_v2.pt or CT_LiPro_v2.pt."
        )
    return CheckpointInfo("ctclip")


def live_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the dead keys (with or without the ClassFine prefix)."""
    def dead(key: str) -> bool:
        bare = key.removeprefix(CLASSFINE_PREFIX)
        return bare.startswith(DEAD_KEY_PREFIXES)

    return {k: v for k, v in state.items() if not dead(k)}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """`load_state_dict(strict=True)` of the live keys; a mismatch names its likely cause."""
    state = live_keys(state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatch(_explain(name, missing, unexpected, wrong_shape, state, expected))
    model.load_state_dict(state, strict=True)


def cached_safetensors(path: Path, cache_dir: Path) -> Path:
    """Convert `path` once to a safetensors file of its live keys in `cache_dir`; return the cached file."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"{path.stem}-{key}.safetensors"
    if target.exists():
        return target
    from safetensors.torch import save_file

    state = live_keys(read_state_dict(path))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"source": path.name})
    os.replace(tmp, target)  # atomic: a crash never leaves a half-written cache entry
    return target


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict):
                obj = inner
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{path.name} does not hold a state dict of tensors.")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _explain(name: str, missing: list[str], unexpected: list[str], wrong_shape: list[str],
             state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    causes = []
    if any("_codebook.embed_avg" in k for k in unexpected):
        causes.append("it was saved with a vector-quantize-pytorch other than 1.1.2 (extra `embed_avg`)")
    if missing and all(k.startswith("text_transformer.") for k in missing):
        causes.append("its text tower is missing or from another BERT")
    if wrong_shape:
        k = wrong_shape[0]
        causes.append(f"its model size differs (e.g. {k}: file {tuple(state[k].shape)} vs model "
                      f"{tuple(expected[k].shape)}) — a different configuration")
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) such as {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) such as {unexpected[0]}")
    if wrong_shape:
        parts.append(f"{len(wrong_shape)} of another shape")
    why = "; likely " + " and ".join(causes) if causes else ""
    return f"{name} does not match the CT-CLIP layout: {', '.join(parts)}{why}."


def _is_zip_pickle(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]
