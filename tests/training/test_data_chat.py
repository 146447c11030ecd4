"""CT-CHAT training data: upstream's VQA JSON, the rendered prompt (the engine's own), targets, image tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import tiny_llama3_tokenizer

from engine.chat.prompts import LLAMA3_STOP, render_prompt, user_turn_texts
from training.data_chat import (
    IGNORE_INDEX,
    IMAGE_INDEX,
    ChatFormat,
    ImageTokenStore,
    VQADataError,
    VQASample,
    collate,
    conversation_segments,
    encode_sample,
    read_vqa_json,
    save_image_tokens,
    write_vqa_json,
)

UPSTREAM_STYLE = [
    {"id": "a", "image": "train_1_a_1.nii.gz", "conversations": [
        {"from": "gpt", "value": "(a stray leading answer upstream skips)"},
        {"from": "human", "value": "<provided>Is there a nodule? <short_answer>\n<image>"},
        {"from": "gpt", "value": "Yes."},
        {"from": "human", "value": "Where is it? <long_answer>"},
        {"from": "gpt", "value": "In the right upper lobe."},
        {"from": "human", "value": "An unanswered last question is dropped."}]},
    {"conversations": [{"from": "human", "value": "What is emphysema?"}, {"from": "gpt", "value": "Airspace loss."}]},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from transformers import PreTrainedTokenizerFast

    folder = tiny_llama3_tokenizer(tmp_path_factory.mktemp("tok"))
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps(data))
    return path


def test_reads_upstream_conversations_like_its_preprocessing(tmp_path: Path) -> None:
    first, text_only = read_vqa_json(_write(tmp_path, UPSTREAM_STYLE))
    assert first.id == "a" and first.image == "train_1_a_1.nii.gz"
    assert first.turns == (("user", "<image>\n<provided>Is there a nodule? <short_answer>"), ("assistant", "Yes."),
                           ("user", "Where is it? <long_answer>"), ("assistant", "In the right upper lobe."))
    assert text_only.id == "1" and text_only.image is None and len(text_only.turns) == 2
    write_vqa_json([first, text_only], tmp_path / "again.json")
    assert read_vqa_json(tmp_path / "again.json") == [first, text_only]


@pytest.mark.parametrize(("data", "message"), [
    ({"not": "a list"}, "JSON list"),
    ([{"image": "x.npz"}], "conversations"),
    ([{"conversations": [{"from": "robot", "value": "hi"}]}], "human/gpt"),
    ([{"conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]}],
     "names no image"),
    ([{"image": "x", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]}],
     "exactly one human turn"),
    ([{"conversations": [{"from": "human", "value": "only a question"}]}], "no answered question"),
])
def test_malformed_files_are_refused_with_the_reason(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(VQADataError, match=message):
        read_vqa_json(_write(tmp_path, data))
    with pytest.raises(VQADataError, match="does not exist"):
        read_vqa_json(tmp_path / "missing.json")


def test_training_renders_the_string_the_engine_sends_at_inference() -> None:
    question = [{"role": "user", "content": "Is there a pleural effusion?", "mode": "short_answer"}]
    turns = user_turn_texts(question, has_image=True)
    fmt = ChatFormat("llama3")
    assert fmt.render(turns, add_generation_prompt=True) == render_prompt(question, has_image=True)
    segments = conversation_segments([*turns, ("assistant", "No.")], fmt)
    assert "".join(t for t, _ in segments) == render_prompt(question, has_image=True) + "No." + LLAMA3_STOP
    assert [t for t, target in segments if target] == ["No." + LLAMA3_STOP]  # the reply and its stop token only


def test_every_reply_of_a_conversation_is_a_target_in_each_family() -> None:
    turns = (("user", "<image>\nQ1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2"))
    expected = {"llama3": ["A1" + LLAMA3_STOP, "A2" + LLAMA3_STOP], "vicuna_v1": [" A1</s>", " A2</s>"],
                "mistral_instruct": [" A1 </s>", " A2 </s>"]}  # each family's own spacing (engine.chat.prompts)
    for family, replies in expected.items():
        assert [t for t, target in conversation_segments(turns, ChatFormat(family)) if target] == replies
    plain = conversation_segments(turns[:2], ChatFormat("llama3"), plain=True)
    assert plain == [("<image>", False), ("A1\n", True)]  # upstream's stage-1 format


def test_ids_mark_the_image_and_labels_cover_only_the_reply(tokenizer) -> None:  # type: ignore[no-untyped-def]
    turns = tuple(user_turn_texts([{"role": "user", "content": "Nodule?", "mode": "short_answer"}], has_image=True))
    sample = VQASample("s", "s.npz", (*turns, ("assistant", "Yes.")))
    fmt = ChatFormat.from_tokenizer(tokenizer, "llama3")
    enc = encode_sample(sample, tokenizer, fmt)
    assert enc.ids.count(IMAGE_INDEX) == 1 and len(enc.ids) == len(enc.labels)
    assert enc.ids[0] == tokenizer.bos_token_id  # + the template's own <|begin_of_text|>: upstream's double BOS
    assert enc.ids[1] == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    target = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(target) == "Yes." + LLAMA3_STOP
    assert enc.labels[-len(target):] == enc.ids[-len(target):]
    before = render_prompt([{"role": "user", "content": "Nodule?", "mode": "short_answer"}], has_image=True)
    head = enc.ids[1:enc.ids.index(IMAGE_INDEX)]  # the text before the image, tokenised alone as llama.cpp does
    assert head == tokenizer(before.split("<image>")[0], add_special_tokens=False)["input_ids"]
    with pytest.raises(VQADataError, match="do not match"):
        encode_sample(VQASample("t", None, sample.turns), tokenizer, fmt)


def test_image_tokens_load_by_upstream_name_and_batch(tmp_path: Path) -> None:
    grid = np.arange(2 * 3 * 4 * 8, dtype=np.float32).reshape(2, 3, 4, 8)
    save_image_tokens(grid, tmp_path / "train_1_a_1.npz")
    with np.load(tmp_path / "train_1_a_1.npz") as npz:
        assert npz["arr"].shape == (1, 2, 3, 4, 8)  # as upstream's encode_script writes it
    store = ImageTokenStore(tmp_path)
    tokens = store.load("train_1_a_1.nii.gz")
    assert tokens.shape == (24, 8) and torch.equal(tokens, torch.from_numpy(grid.reshape(24, 8)))
    with pytest.raises(VQADataError, match="missing"):
        store.load("train_2_a_1.nii.gz")
    batch = collate([{"ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3], "image": tokens},
                     {"ids": [4], "labels": [4], "image": None}], pad_id=0)
    assert batch["ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["images"].shape == (2, 24, 8) and not batch["images"][1].any()
