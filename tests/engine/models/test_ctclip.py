"""CT-CLIP wrapper: latents, the real MiniLM text tower, upstream's logits, and loading files in upstream layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import minilm_dir, tiny_config, tiny_ctclip

from engine.models import checkpoints
from engine.models.ctclip import CTCLIPClassifier
from engine.models.loading import CTClipSpec, load_ctclip, resolve_spec
from engine.models.text import load_tokenizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return tiny_ctclip(seed=1)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(minilm_dir())


def test_tokenizer_is_bert_base_uncased_wordpiece(tokenizer) -> None:
    ids = tokenizer("Pleural effusion is present.")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] … [SEP] of the bert-base-uncased vocabulary
    assert len(tokenizer.tokenize("pneumothorax")) > 1  # radiology words split into word pieces
    assert tokenizer.tokenize("Pleural") == tokenizer.tokenize("pleural")  # lower-cased


def test_image_latent_is_normalised_mean_over_slice_tokens(model) -> None:
    video = torch.randn(2, 1, 8, 32, 32)
    with torch.no_grad():
        latents, tokens = model.encode_image(video)
        manual = F.normalize(tokens.mean(dim=1).reshape(2, -1) @ model.to_visual_latent.weight.T, dim=-1)
    assert latents.shape == (2, 32) and tokens.shape == (2, 2, 4, 4, 32)
    torch.testing.assert_close(latents, manual)
    torch.testing.assert_close(latents.norm(dim=-1), torch.ones(2))


def test_text_latent_is_projected_cls_of_the_real_minilm(model, tokenizer) -> None:
    from builders import minilm_bert_config
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    reference = BertModel(BertConfig(**minilm_bert_config()), add_pooling_layer=True).eval()
    reference.load_state_dict({k: v for k, v in load_file(str(minilm_dir() / "model.safetensors")).items()
                               if not k.endswith("position_ids")})
    batch = tokenizer(["Bilateral pleural effusion.", "No consolidation."], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model.encode_text(batch["input_ids"], batch["attention_mask"])
        cls = reference(**batch).last_hidden_state[:, 0]
        expected = F.normalize(cls @ model.to_text_latent.weight.T, dim=-1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_logits_are_pairwise_dot_products_times_exp_temperature(model, tokenizer) -> None:
    with torch.no_grad():
        model.temperature.fill_(np.log(20.0))
        batch = tokenizer(["A is present.", "A is not present."], padding=True, return_tensors="pt")
        video = torch.randn(1, 1, 8, 32, 32)
        logits = model(batch["input_ids"], batch["attention_mask"], video)  # image batch of 1 broadcasts
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        image, _ = model.encode_image(video)
    assert model.logit_scale.item() == pytest.approx(20.0)
    torch.testing.assert_close(logits, (text @ image[0]) * 20.0)


def test_a_file_in_upstream_layout_loads_through_the_safetensors_cache(tmp_path: Path, model) -> None:
    """Saved as upstream saves: plain torch pickle with dead keys and BERT's position_ids buffer."""
    state = dict(model.state_dict())
    state["text_transformer.embeddings.position_ids"] = torch.arange(512)[None]
    state["to_visual_latent_extra.weight"] = torch.zeros_like(state["to_visual_latent.weight"])
    state["to_text_latent_extra.weight"] = torch.zeros_like(state["to_text_latent.weight"])
    state["visual_transformer.to_pixels.0.weight"] = torch.zeros(3, 3)
    weights = tmp_path / "CT-CLIP_tiny.pt"
    torch.save(state, weights)
    spec = CTClipSpec("tiny", weights, tiny_config(), minilm_dir())
    loaded = load_ctclip(spec, device=CPU, cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == 1 and "to_visual_latent_extra.weight" not in checkpoints.read_state_dict(cached[0])
    video = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.clip.encode_image(video)[0], model.encode_image(video)[0])
    assert loaded.kind == "zero-shot"
    again = load_ctclip(spec, device=CPU, cache_dir=tmp_path / "cache")  # second load: from the cache
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1 and again.kind == "zero-shot"


def test_classfine_file_gives_sigmoid_of_relu_latent(tmp_path: Path, model) -> None:
    head = CTCLIPClassifier(model, num_classes=18).eval()
    weights = tmp_path / "CT_LiPro_tiny.pt"
    torch.save(head.state_dict(), weights)
    loaded = load_ctclip(CTClipSpec("lipro", weights, tiny_config(), minilm_dir()), device=CPU)
    assert loaded.kind == "classfine" and loaded.classifier is not None
    video = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        latent, _ = model.encode_image(video)
        expected = torch.sigmoid(F.relu(latent) @ head.classifier.weight.T + head.classifier.bias)
        torch.testing.assert_close(loaded.classifier(video), expected)


def test_an_official_file_without_the_tokenizer_says_where_to_put_it(tmp_path: Path) -> None:
    from engine.errors import CheckpointMismatch
    from engine.model_store import ModelStore

    weights = tmp_path / "CT-CLIP_v2.pt"
    weights.write_bytes(b"x")
    with pytest.raises(CheckpointMismatch, match="BiomedVLP-CXR-BERT-specialized"):
        resolve_spec(weights, ModelStore(tmp_path / "store"))
