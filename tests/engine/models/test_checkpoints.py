"""Official CT-CLIP checkpoints load unchanged: full layout vs the upstream manifest, format detection, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.errors import CheckpointMismatch
from engine.models import checkpoints
from engine.models.ctclip import CTCLIP, CTCLIPClassifier, build_ctclip
from engine.models.loading import official_config

REPO = Path(__file__).resolve().parents[3]
MANIFEST = REPO.parent / "shared" / "reference" / "ctclip_state_dict_manifest.json"  # shared/ beside the checkout
DTYPES = {"float32": torch.float32, "int64": torch.int64}


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not MANIFEST.is_file():
        pytest.skip(f"upstream manifest not found at {MANIFEST}")
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def full_model_on_meta(manifest: dict) -> CTCLIP:
    cfg = manifest["config"]
    with torch.device("meta"):
        return build_ctclip(cfg["CTViT"], cfg["CTCLIP"], cfg["BertConfig"])


def manifest_state(manifest: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: torch.empty(v["shape"], dtype=DTYPES[v["dtype"]], device="meta")
            for k, v in manifest["state_dict"].items()}


def test_full_config_has_upstream_keys_shapes_and_dtypes_except_listed_dead_keys(manifest, full_model_on_meta) -> None:
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in full_model_on_meta.state_dict().items()}
    upstream = {k: (v["shape"], v["dtype"]) for k, v in manifest["state_dict"].items()}
    dead = {k for k in upstream if k.startswith(checkpoints.DEAD_KEY_PREFIXES)}
    assert set(ours) == set(upstream) - dead
    assert {k: upstream[k] for k in ours} == ours
    assert len(dead) == 13  # *_extra (2), position_ids, first-frame patch embedding (6), pixel decoders (4)


def test_official_config_file_matches_the_manifest(manifest) -> None:
    cfg = official_config()
    assert cfg["vit"] == manifest["config"]["CTViT"]
    assert cfg["bert"] == manifest["config"]["BertConfig"]
    assert cfg["clip"]["dim_image"] == 294912 and cfg["clip"]["dim_latent"] == 512


def test_full_layout_loads_strictly_with_and_without_position_ids(manifest, full_model_on_meta) -> None:
    state = manifest_state(manifest)
    checkpoints.load_strict(full_model_on_meta, state, "CT-CLIP_v2.pt")
    state.pop("text_transformer.embeddings.position_ids")
    checkpoints.load_strict(full_model_on_meta, state, "CT-CLIP_v2.pt")


def test_classfine_layout_is_recognised_and_loads(manifest, full_model_on_meta) -> None:
    state = manifest_state(manifest, "trained_model.")
    state["classifier.weight"] = torch.empty(18, 512, device="meta")
    state["classifier.bias"] = torch.empty(18, device="meta")
    info = checkpoints.identify(state, "CT_LiPro_v2.pt")
    assert info.kind == "classfine" and info.num_classes == 18
    with torch.device("meta"):
        head = CTCLIPClassifier(full_model_on_meta, num_classes=18)
    checkpoints.load_strict(head, state, "CT_LiPro_v2.pt")


def test_missing_and_foreign_keys_are_named(manifest, full_model_on_meta) -> None:
    state = manifest_state(manifest)
    del state["visual_transformer.vq._codebook.embed"]
    state["visual_transformer.vq._codebook.embed_avg"] = torch.empty(1, 8192, 512, device="meta")
    with pytest.raises(CheckpointMismatch, match=r"vq\._codebook\.embed.*vector-quantize-pytorch"):
        checkpoints.load_strict(full_model_on_meta, state, "x.pt")


def test_v1_checkpoint_is_refused_with_advice(manifest) -> None:
    state = manifest_state(manifest)
    state["to_visual_latent.weight"] = torch.empty(512, 2_097_152, device="meta")
    with pytest.raises(CheckpointMismatch, match="v1 CT-CLIP checkpoint.*CT-CLIP_v2.pt"):
        checkpoints.identify(state, "CT_CLIP_zeroshot.pt")


def test_a_foreign_state_dict_is_refused() -> None:
    with pytest.raises(CheckpointMismatch, match="not a CT-CLIP checkpoint"):
        checkpoints.identify({"encoder.weight": torch.zeros(2)}, "resnet.pt")


class _Payload:
    def __reduce__(self):  # an object whose unpickling would run code
        return (print, ("this must never run",))


def test_pickles_that_need_code_execution_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"a": _Payload()}, path)  # what torch.save(model) files look like: classes to import and call
    with pytest.raises(CheckpointMismatch, match="code execution"):
        checkpoints.read_state_dict(path)


def test_garbage_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointMismatch, match="not a readable PyTorch weights file"):
        checkpoints.read_state_dict(junk)
    with pytest.raises(CheckpointMismatch, match="does not exist"):
        checkpoints.read_state_dict(tmp_path / "absent.pt")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointMismatch, match="safetensors"):
        checkpoints.read_state_dict(bad_st)
