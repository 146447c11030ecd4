"""`ctdesk convert-chat`: a tiny upstream-shaped CT-CHAT checkpoint → GGUF bundle, checked against the merged model.

The tiny checkpoint (tests/builders.py) has a Llama-3-style BPE tokenizer with CT-CHAT's 5 added tokens, a random
2-layer Llama with grouped KV heads, a random LoRA on every linear layer and the projector in
non_lora_trainables.bin; its folder name has neither "llava" nor "lora".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from builders import tiny_ctchat_checkpoint  # noqa: E402

from engine.chat.bundle import read_chat_bundle  # noqa: E402
from engine.chat.convert import convert_ctchat  # noqa: E402
from engine.chat.gguf_export import iter_gguf_tensor_types, permute_for_rope  # noqa: E402
from engine.chat.gguf_vocab import CONTROL, read_vocab  # noqa: E402
from engine.chat.lora import load_ctchat  # noqa: E402
from engine.chat.prompts import render_prompt  # noqa: E402
from engine.errors import CheckpointMismatch, EngineError, UnsupportedModel  # noqa: E402

SAMPLES = [
    "Is there a 12 mm nodule in the left upper lobe? <short_answer>",
    "<multiple_choice> A) effusion B) pneumothorax\n\n  trailing   spaces  ",
    "<long_answer><report_generation><pad> Lungs: ü, é, 肺, 🫁 — 3.14159 / 2024-05-01",
    "<|start_header_id|>user<|end_header_id|>\n\n<provided>What's up?<|eot_id|>",
    "<short_answe>r> literal",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_ctchat_checkpoint(tmp_path_factory.mktemp("ctchat"))


@pytest.fixture(scope="module")
def merged(checkpoint: tuple[Path, Path]) -> Any:
    return load_ctchat(*checkpoint)


@pytest.fixture(scope="module")
def tokenizer(checkpoint: tuple[Path, Path]) -> Any:
    from engine.chat.hf import load_tokenizer

    return load_tokenizer(checkpoint[0])


@pytest.fixture(scope="module")
def bundles(checkpoint: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One bundle per output type, converted on first use."""
    out_root = tmp_path_factory.mktemp("bundles")

    class Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, quant: str) -> Path:
            self[quant] = convert_ctchat(*checkpoint, out_root / quant, quant=quant).bundle.folder
            return self[quant]

    return Lazy()


def _prompt_ids(tokenizer: Any) -> list[int]:
    text = render_prompt([{"role": "user", "content": "Is there an effusion?", "mode": "short_answer"}],
                         has_image=False)
    return list(tokenizer(text)["input_ids"])


def _llama(path: Path, **kwargs: Any) -> Any:
    return llama_cpp.Llama(str(path), n_ctx=2048, n_batch=2048, logits_all=True, verbose=False, n_threads=2,
                           **kwargs)


def _gguf_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = _llama(path, type_k=0, type_v=0)  # F32 KV cache: the default F16 cache alone costs ~1e-3
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


@torch.no_grad()
def _hf_logits(merged: Any, ids: list[int]) -> np.ndarray:
    return merged.model(torch.tensor([ids])).logits[0].float().numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_f32_gguf_logits_equal_the_merged_model(bundles: dict[str, Path], merged: Any, tokenizer: Any) -> None:
    bundle = read_chat_bundle(bundles["f32"])
    assert (bundle.family, bundle.n_embd, bundle.gguf_path.suffix) == ("llama3", 64, ".gguf")
    ids = _prompt_ids(tokenizer)
    assert ids[:2] == [tokenizer.bos_token_id] * 2 and len(ids) > 400  # upstream's double BOS, full guardrail
    # The guardrail names the task tokens, so they are in every prompt — except "<short_answer>", which is text.
    assert {321, 322, 324} <= set(ids) and 323 not in ids
    got, want = _gguf_logits(bundle.gguf_path, ids), _hf_logits(merged, ids)
    assert np.abs(got - want).mean() < 2e-5  # float32 round-off only (different summation order)
    np.testing.assert_allclose(got, want, atol=5e-4, rtol=0)  # worst of ~300 k logits, 1000 positions deep


def test_f16_gguf_logits_match_within_half_precision(bundles: dict[str, Path], merged: Any, tokenizer: Any) -> None:
    ids = _prompt_ids(tokenizer)
    got, want = _gguf_logits(read_chat_bundle(bundles["f16"]).gguf_path, ids), _hf_logits(merged, ids)
    diff = np.abs(got - want)
    print(f"f16: mean {diff.mean():.2e}, 99.9% {np.quantile(diff, 0.999):.2e}, max {diff.max():.2e}, "
          f"cos {_cosine(got, want).min():.6f}")
    assert diff.mean() < 5e-3 and np.quantile(diff, 0.999) < 3e-2 and diff.max() < 0.1  # logits of size ~1
    assert _cosine(got, want).min() > 0.999


def test_gguf_tokenizer_matches_the_hf_tokenizer(bundles: dict[str, Path], tokenizer: Any) -> None:
    llm = _llama(read_chat_bundle(bundles["f32"]).gguf_path, vocab_only=True)
    try:
        for text in SAMPLES:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"], text
    finally:
        llm.close()
    # Upstream registered "<short_answe>" but writes "<short_answer>": that text does not contain the token's
    # closing ">" at the right place, so it is ordinary text to both tokenizers; only "<short_answe>" is the token.
    short_id = tokenizer.convert_tokens_to_ids("<short_answe>")
    assert short_id not in tokenizer("<short_answer>")["input_ids"]
    assert tokenizer("<short_answe>", add_special_tokens=False)["input_ids"] == [short_id]


def test_gguf_metadata_keeps_added_tokens_and_template(bundles: dict[str, Path], tokenizer: Any) -> None:
    reader = gguf.GGUFReader(str(read_chat_bundle(bundles["f32"]).gguf_path))

    def field(name: str) -> Any:
        return reader.fields[name].contents()

    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert len(tokens) == 325 and tokens[320:] == ["<pad>", "<multiple_choice>", "<long_answer>", "<short_answe>",
                                                   "<report_generation>"]
    assert all(t == CONTROL for t in types[315:])  # Llama 3 specials + CT-CHAT's added tokens
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "llama-bpe"
    assert field("tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert field("tokenizer.ggml.eot_token_id") == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert field("tokenizer.ggml.padding_token_id") == tokenizer.convert_tokens_to_ids("<pad>")
    assert "<|start_header_id|>" in field("tokenizer.chat_template")
    assert field("llama.attention.head_count_kv") == 2 and field("llama.rope.freq_base") == 500000.0


def test_gguf_passes_the_engine_load_check(bundles: dict[str, Path]) -> None:
    check = pytest.importorskip("engine.chat.gguf_check")
    check.validate_gguf(read_chat_bundle(bundles["f16"]).gguf_path)


def test_q8_0_bundle_loads_and_tracks_the_merged_model(bundles: dict[str, Path], merged: Any,
                                                       tokenizer: Any) -> None:
    path = read_chat_bundle(bundles["q8_0"]).gguf_path
    assert path.name.endswith(".q8_0.gguf")
    assert {t for _n, t, _s in iter_gguf_tensor_types(path)} == {"Q8_0", "F32"}  # 2-D weights Q8_0, norms F32
    ids = _prompt_ids(tokenizer)
    got, want = _gguf_logits(path, ids), _hf_logits(merged, ids)
    cos, agree = _cosine(got, want), (got.argmax(-1) == want.argmax(-1)).mean()
    print(f"q8_0: cosine median {np.median(cos):.5f}, 5% {np.quantile(cos, 0.05):.4f}, argmax agreement {agree:.3f}")
    # A random 2-layer net amplifies weight rounding at a few positions (the same happens when the merged torch
    # model's weights are rounded to Q8_0 blocks in torch), so judge the bulk of the positions.
    assert np.median(cos) > 0.995 and np.quantile(cos, 0.05) > 0.97 and agree > 0.8


def test_q4_k_m_falls_back_on_rows_narrower_than_256(bundles: dict[str, Path], merged: Any,
                                                     tokenizer: Any) -> None:
    path = read_chat_bundle(bundles["q4_k_m"]).gguf_path
    types = {t for _n, t, _s in iter_gguf_tensor_types(path)}
    assert "Q4_K" not in types and "Q5_0" in types  # llama.cpp: 64-wide rows cannot hold 256-wide K-quant blocks
    ids = _prompt_ids(tokenizer)
    got, want = _gguf_logits(path, ids), _hf_logits(merged, ids)
    cos = _cosine(got, want)
    print(f"q4_k_m (Q5_0/Q8_0 fallback): cosine median {np.median(cos):.4f}")
    assert np.isfinite(got).all() and np.median(cos) > 0.8


def test_q4_k_m_uses_k_quants_when_rows_allow(tmp_path: Path) -> None:
    lora, base = tiny_ctchat_checkpoint(tmp_path / "wide", hidden_size=256, intermediate_size=512)
    bundle = convert_ctchat(lora, base, tmp_path / "out", quant="q4_k_m").bundle
    types = {t for _n, t, _s in iter_gguf_tensor_types(bundle.gguf_path)}
    assert {"Q4_K", "Q6_K"} <= types  # Q4_K_M: most weights Q4_K, some (attn_v, ffn_down, output) Q6_K
    from engine.chat.hf import load_tokenizer

    ref = load_ctchat(lora, base)
    ids = _prompt_ids(load_tokenizer(lora))[:300]
    got, want = _gguf_logits(bundle.gguf_path, ids), _hf_logits(ref, ids)
    cos = _cosine(got, want)
    print(f"q4_k_m (Q4_K/Q6_K): cosine median {np.median(cos):.4f}")
    assert np.median(cos) > 0.8


def test_projector_is_saved_unchanged(bundles: dict[str, Path], checkpoint: tuple[Path, Path]) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(read_chat_bundle(bundles["f32"]).projector_path))
    prefix = "base_model.model.model.mm_projector."
    original = {k[len(prefix):]: v for k, v in torch.load(checkpoint[0] / "non_lora_trainables.bin",
                                                          weights_only=True).items() if k.startswith(prefix)}
    assert saved.keys() == original.keys() and len(saved) == 14  # attn_pool 8, ln 2, proj 4
    for k, v in original.items():
        assert torch.equal(saved[k], v.float()), k


def test_lora_applies_whatever_the_folder_is_called(checkpoint: tuple[Path, Path], merged: Any) -> None:
    lora, base = checkpoint
    assert "llava" not in lora.name and "lora" not in lora.name  # upstream's builder would skip the LoRA here
    from safetensors.torch import load_file

    base_q = load_file(str(base / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    merged_q = merged.model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert (merged_q - base_q).abs().max() > 0.05  # the merged LoRA delta is there
    assert merged.added_tokens == ["<pad>", "<multiple_choice>", "<long_answer>", "<short_answe>",
                                   "<report_generation>"]
    assert merged.warnings == []  # non_lora_trainables.bin carried the added rows


def test_missing_added_token_rows_are_deterministic_and_reported(tmp_path: Path) -> None:
    lora, base = tiny_ctchat_checkpoint(tmp_path, embedding_rows=False)
    first, second = load_ctchat(lora, base), load_ctchat(lora, base)
    assert first.warnings and "randomly" in first.warnings[0] and "mean" in first.warnings[0]
    emb = first.model.get_input_embeddings().weight
    torch.testing.assert_close(emb[320:], emb[:320].mean(0).expand(5, -1), rtol=0, atol=1e-6)
    assert torch.equal(emb, second.model.get_input_embeddings().weight)


def test_permute_interleaves_the_two_halves_of_each_head() -> None:
    w = torch.arange(8.0).reshape(8, 1)  # 2 heads × head_dim 4
    assert permute_for_rope(w, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_cli_writes_a_bundle_and_reports_bad_input(checkpoint: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    lora, base = checkpoint
    out = tmp_path / "bundle"
    assert main(["convert-chat", "--lora", str(lora), "--base", str(base), "--out", str(out), "--quant", "f16"]) == 0
    text = capsys.readouterr().out
    assert "merged; vocabulary 320 + 5 added tokens" in text and "Chat bundle ready" in text
    assert json.loads((out / "conversion.json").read_text())["added_tokens"][0] == "<pad>"
    assert main(["convert-chat", "--lora", str(lora), "--base", str(base), "--out", str(out)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["convert-chat", "--lora", str(base), "--base", str(lora), "--out", str(tmp_path / "x")]) == 1
    assert "look swapped" in capsys.readouterr().err


def _other_base(checkpoint: tuple[Path, Path], folder: Path, **overrides: Any) -> Path:
    """A base model folder like the checkpoint's but with other dimensions (same tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = checkpoint[1]
    config = json.loads((base / "config.json").read_text())
    config.update(overrides)
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures",)})) \
        .save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, folder / name)
    return folder


@pytest.mark.parametrize("overrides, message", [
    ({"intermediate_size": 96}, "trained on another base model: model.layers.0.mlp"),
    ({"num_hidden_layers": 1}, "does not have"),
    ({"hidden_size": 32}, "outputs 64-wide embeddings but the base model"),
])
def test_lora_for_another_base_is_refused(checkpoint: tuple[Path, Path], tmp_path: Path,
                                          overrides: dict[str, int], message: str) -> None:
    other = _other_base(checkpoint, tmp_path / "other", **overrides)
    with pytest.raises(CheckpointMismatch, match=message):
        convert_ctchat(checkpoint[0], other, tmp_path / "out", quant="f16")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))  # nothing half-written


def test_incomplete_lora_folder_is_refused(checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    lora = tmp_path / "copy"
    shutil.copytree(checkpoint[0], lora)
    (lora / "non_lora_trainables.bin").unlink()
    with pytest.raises(CheckpointMismatch, match="non_lora_trainables.bin"):
        convert_ctchat(lora, checkpoint[1], tmp_path / "out")
    with pytest.raises(CheckpointMismatch, match="does not exist"):
        convert_ctchat(tmp_path / "nowhere", checkpoint[1], tmp_path / "out")
    with pytest.raises(EngineError, match="Unknown output type"):
        convert_ctchat(checkpoint[0], checkpoint[1], tmp_path / "out", quant="q2_k")


def test_duplicate_or_unknown_tokenizer_is_refused(checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    data = json.loads((checkpoint[0] / "tokenizer.json").read_text())
    data["added_tokens"].append({"id": 325, "content": "Ġthe", "special": False})  # also a BPE token
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UnsupportedModel, match="twice"):
        read_vocab(folder, 326)
    data["added_tokens"].pop()
    data["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UnsupportedModel, match="cannot be converted"):
        read_vocab(folder, 325)
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "use_regex": False}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UnsupportedModel, match="pre-tokenizer"):
        read_vocab(folder, 325)


def test_sentencepiece_vocabulary_tokenises_like_sentencepiece(tmp_path: Path) -> None:
    """Llama 2 / Vicuna / Mistral tokenizers (tokenizer.model + added_tokens.json) → a "llama" GGUF vocabulary."""
    spm = pytest.importorskip("sentencepiece")
    import io

    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.chat.gguf_export import write_llama_gguf
    from engine.chat.lora import tokenizer_size
    from engine.chat.prompts import VICUNA_SYSTEM, guardrail_text

    model = io.BytesIO()  # a byte-fallback BPE with Llama 2's normalisation settings (none)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([guardrail_text(), VICUNA_SYSTEM, "Small right pleural effusion, 12 mm nodule."] * 4),
        model_writer=model, vocab_size=416, model_type="bpe", byte_fallback=True, character_coverage=1.0,
        split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True)
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    added = {"<pad>": 416, "<multiple_choice>": 417, "<long_answer>": 418, "<short_answe>": 419,
             "<report_generation>": 420}
    (tmp_path / "added_tokens.json").write_text(json.dumps(added))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "added_tokens_decoder": {str(i): {"content": t, "special": True} for t, i in added.items()}}))
    n_vocab = tokenizer_size(tmp_path)
    assert n_vocab == 421
    vocab = read_vocab(tmp_path, n_vocab)
    assert vocab.model == "llama" and vocab.types[418] == CONTROL and vocab.special_ids["pad"] == 416
    config = dict(vocab_size=n_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    gguf_path = write_llama_gguf(LlamaForCausalLM(LlamaConfig(**config)), config, vocab, tmp_path / "m.gguf",
                                 out_type="f32")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    llm = _llama(gguf_path, vocab_only=True)
    try:
        for text in ["A chat between a curious user and an artificial intelligence assistant.",
                     "USER: Is there a 12 mm nodule?  Two  spaces, ü 肺 🫁 ASSISTANT:"]:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == [1, *sp.encode(text)], text
        assert llm.tokenize(b"<long_answer>", add_bos=False, special=True) == [418]
    finally:
        llm.close()


def test_llama3_rope_scaling_becomes_rope_freqs(checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    """Llama 3.1's frequency-dependent RoPE scaling (written as `rope_freqs`) gives the same logits as transformers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.chat.gguf_export import write_llama_gguf
    from engine.chat.hf import load_tokenizer

    config = json.loads((checkpoint[1] / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 64}  # small: scaling matters at 1000 positions
    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"})).eval()
    path = write_llama_gguf(model, config, read_vocab(checkpoint[1], 320), tmp_path / "rope.gguf", out_type="f32")
    assert "rope_freqs.weight" in {n for n, _t, _s in iter_gguf_tensor_types(path)}
    ids = _prompt_ids(load_tokenizer(checkpoint[1]))  # the base tokenizer: no CT-CHAT tokens in this model
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    got = _gguf_logits(path, ids)
    assert np.abs(got - want).mean() < 2e-5
    np.testing.assert_allclose(got, want, atol=5e-4, rtol=0)
