"""CT-CHAT training on a tiny random Llama: both stages lower the loss, the cached prefix is exact, runs resume, and
the output folder is what `ctdesk convert-chat` converts and llama.cpp then runs (projector with 16-wide tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import tiny_ctchat_checkpoint

from engine.chat.prompts import user_turn_texts
from engine.errors import CheckpointMismatch
from engine.models.projector import load_projector
from training.chat_model import CTChatForTraining, PrefixKV, add_ctchat_tokens
from training.data_chat import (
    ChatDataset,
    ChatFormat,
    ImageTokenStore,
    VQASample,
    collate,
    save_image_tokens,
    write_vqa_json,
)
from training.train_chat import ChatTrainConfig, load_base, shared_prefix, train

QUESTION = "Is there pleural effusion?"
CONTEXT_DIM, QUERIES = 16, 8


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama-3-style base model and 8 conversations whose answer ("Yes."/"No.") is visible in the image."""
    root = tmp_path_factory.mktemp("chat")
    _, base = tiny_ctchat_checkpoint(root / "upstream")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    human = user_turn_texts([{"role": "user", "content": QUESTION, "mode": "short_answer"}], has_image=True)[0][1]
    samples = []
    for i in range(8):
        present = i % 2 == 0
        sign = np.where(np.arange(CONTEXT_DIM) < CONTEXT_DIM // 2, 2.0, -2.0) * (1 if present else -1)
        # a +/- pattern across channels, not a constant shift: the projector's ln_k would remove that
        grid = rng.normal(0.0, 1.0, (2, 4, 4, CONTEXT_DIM)).astype(np.float32) + sign.astype(np.float32)
        save_image_tokens(grid, images / f"study_{i}.npz")
        samples.append(VQASample(f"s{i}", f"study_{i}.nii.gz", (("user", human),
                                                                 ("assistant", "Yes." if present else "No."))))
    data = write_vqa_json(samples, root / "vqa.json")
    return {"root": root, "base": base, "images": images, "data": data}


def _config(material: dict[str, Path], out: Path, **kwargs: object) -> ChatTrainConfig:
    settings: dict[str, object] = dict(output_dir=str(out), base_model=str(material["base"]),
                                       data=str(material["data"]), image_folder=str(material["images"]),
                                       n_queries=QUERIES, batch_size=8, warmup_ratio=0.0, log_every=1, threads=1)
    settings.update(kwargs)
    return ChatTrainConfig(**settings)  # type: ignore[arg-type]


def _losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "ctdesk_training.json").read_text())["log"]]


@pytest.fixture(scope="module")
def stage1(material: dict[str, Path]) -> Path:
    return train(_config(material, material["root"] / "stage1", stage=1, template="plain", lr=1e-2, max_steps=12))


@pytest.fixture(scope="module")
def stage2(material: dict[str, Path], stage1: Path) -> Path:
    return train(_config(material, material["root"] / "stage2", stage=2, lr=2e-2, max_steps=24, lora_r=4,
                         lora_alpha=8, pretrain_projector=str(stage1 / "mm_projector.bin"), save_every=6))


def test_stage1_trains_the_projector_alone_and_saves_it_as_upstream(stage1: Path) -> None:
    losses = _losses(stage1)
    assert losses[-1] < 0.6 * losses[0]
    state = torch.load(stage1 / "mm_projector.bin", weights_only=True)
    assert state and all(k.startswith("model.mm_projector.") for k in state)
    projector = load_projector(stage1 / "mm_projector.bin")
    assert (projector.context_dim, projector.n_queries, projector.llm_hidden_size) == (CONTEXT_DIM, QUERIES, 64)
    config = json.loads((stage1 / "config.json").read_text())
    assert config["mm_hidden_size"] == CONTEXT_DIM and config["tune_mm_mlp_adapter"] is True


def test_stage2_trains_lora_and_projector_in_upstreams_folder_layout(stage2: Path) -> None:
    losses = _losses(stage2)
    assert losses[-1] < 0.6 * losses[0]
    adapter = json.loads((stage2 / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and adapter["lora_dropout"] == 0.05
    assert sorted(adapter["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                 "v_proj"]  # every Linear but lm_head
    non_lora = torch.load(stage2 / "non_lora_trainables.bin", weights_only=True)
    assert non_lora and all(k.startswith("base_model.model.model.mm_projector.") for k in non_lora)
    tokenizer = json.loads((stage2 / "tokenizer.json").read_text())
    added = [a["content"] for a in tokenizer["added_tokens"]][-5:]
    assert added == ["<pad>", "<multiple_choice>", "<long_answer>", "<short_answe>", "<report_generation>"]


def test_cached_prefix_gives_the_same_loss_as_running_it(material: dict[str, Path]) -> None:
    llm, tokenizer = load_base(str(material["base"]))
    add_ctchat_tokens(llm, tokenizer)
    from engine.models.projector import build_projector

    torch.manual_seed(0)
    model = CTChatForTraining(llm.requires_grad_(False), build_projector(64, context_dim=CONTEXT_DIM,
                                                                         n_queries=QUERIES)).eval()
    from training.data_chat import read_vqa_json

    dataset = ChatDataset(read_vqa_json(material["data"]), tokenizer, ChatFormat.from_tokenizer(tokenizer, "llama3"),
                          ImageTokenStore(material["images"]))
    batch = collate([dataset[i] for i in range(3)], tokenizer.pad_token_id)
    prefix = PrefixKV(shared_prefix(dataset))
    prefix.refresh(model.llm, torch.device("cpu"))
    n = len(prefix)
    assert n > 100  # the guardrail system prompt: the part worth caching
    with torch.no_grad():
        full = model(batch["ids"], batch["labels"], batch["images"])
        cached = model(batch["ids"][:, n:], batch["labels"][:, n:], batch["images"], prefix)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)


def test_a_rerun_resumes_from_the_last_checkpoint(material: dict[str, Path], stage2: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    import shutil

    shutil.copytree(stage2 / "checkpoints", out / "checkpoints")  # as if the run had stopped after step 24
    train(_config(material, out, stage=2, lr=2e-2, max_steps=26, lora_r=4, lora_alpha=8,
                  pretrain_projector=str(material["root"] / "stage1" / "mm_projector.bin")))
    summary = json.loads((out / "ctdesk_training.json").read_text())
    assert summary["resumed_at"] == 24 and summary["steps"] == 26 and [e["step"] for e in summary["log"]] == [25, 26]
    with pytest.raises(CheckpointMismatch, match="does not fit"):  # another LoRA rank cannot continue these weights
        train(_config(material, out, stage=2, max_steps=28, lora_r=2, lora_alpha=4))


def test_the_output_converts_with_convert_chat_and_answers_in_llama_cpp(material: dict[str, Path],
                                                                        stage2: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    import argparse

    from engine.chat.cli_convert import run_convert_chat
    from engine.chat.service import ChatModel

    args = argparse.Namespace(lora=stage2, base=material["base"], out=tmp_path / "bundle", quant="f16", family=None,
                              name=None, merge_dtype="auto", force=False)
    assert run_convert_chat(args) == 0
    grid = np.load(material["images"] / "study_0.npz")["arr"][0]
    with ChatModel(tmp_path / "bundle", n_ctx=2048, n_threads=1) as model:
        embeddings, _ = model.project(grid)
        assert embeddings.shape == (QUERIES, 64)  # a 16-wide token grid through the trained projector
        answers = [model.answer(np.load(material["images"] / f"study_{i}.npz")["arr"][0], QUESTION, "short_answer",
                                max_new_tokens=4).text for i in range(4)]
    assert answers == ["Yes.", "No.", "Yes.", "No."]  # what training taught, through merge, GGUF and llama.cpp
