"""A merged Llama-family model (transformers) → a llama.cpp GGUF file, then quantized with llama.cpp's own quantizer.

Our own writer (with the `gguf` package) rather than llama.cpp's `convert_hf_to_gguf.py`: that script is not part of
any installable package, and CT-CHAT's merged model with its 5 added tokens needs nothing beyond the llama family.
What llama.cpp's "llama" architecture expects, and we therefore write:
- tensor names `token_embd`, `blk.N.attn_q|k|v|output`, `blk.N.ffn_gate|up|down`, `blk.N.attn_norm|ffn_norm`,
  `output_norm`, `output` (omitted for tied embeddings; llama.cpp then reuses `token_embd`);
- Q and K projection rows reordered per head from HF's rotate-half RoPE layout (first half / second half of each
  head) to the interleaved pairs llama.cpp's RoPE kernel rotates (see `permute_for_rope`);
- hyperparameters under `llama.*`, RoPE base and scaling (Llama 3.1's "llama3" scaling as a `rope_freqs` tensor of
  per-frequency factors), and the tokenizer (engine.chat.gguf_vocab).
Tensors are streamed to disk one at a time, so an 8B model needs no second copy in memory.
Quantization (`llama_model_quantize`) takes each tensor's rows in blocks: Q8_0/Q4_0/Q5_0 blocks are 32 wide, the
K-quants' 256 wide. llama.cpp quantizes a tensor whose rows are not a multiple of the block with a fallback type
(Q4_K → Q5_0, Q6_K → Q8_0 …; F16 when not even a multiple of 32), so tiny models still convert.
"""

from __future__ import annotations

import ctypes
import logging
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.chat.gguf_vocab import GGUFVocab
from engine.errors import EngineError, MissingDependency, UnsupportedModel

if TYPE_CHECKING:
    from transformers import PreTrainedModel

OUT_TYPES = ("f32", "f16")
QUANT_TYPES = ("q8_0", "q4_k_m")
_LAYER_MAP = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")

Progress = Callable[[str], None]


def permute_for_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder Q/K output rows per head: HF pairs row i with row i + d/2, llama.cpp pairs rows 2i and 2i+1.

    Row j of a head (d rows) becomes row (j mod d/2)·2 + (j div d/2): the two halves are interleaved. For K use the
    number of KV heads. Works for weights (rows, in) and biases (rows,).
    """
    rows = weight.shape[0]
    head_dim = rows // n_heads
    return (weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])  # (head, half, pair, …)
            .transpose(1, 2)  # (head, pair, half, …): each pair's two rows now adjacent
            .reshape(weight.shape))


def hf_to_gguf_name(key: str) -> str:
    """The GGUF tensor name for a LlamaForCausalLM state-dict key."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if key in fixed:
        return fixed[key]
    m = _LAYER_KEY.match(key)
    if m and m.group(2) in _LAYER_MAP:
        return f"blk.{m.group(1)}.{_LAYER_MAP[m.group(2)]}.{m.group(3)}"
    raise UnsupportedModel(f"Unexpected tensor {key} in the model: not a plain Llama-family layer.")


def rope_settings(config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope_theta, scaling parameters or {}) from a config.json of transformers 4 (`rope_scaling`) or 5
    (`rope_parameters`)."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    merged = {**scaling, **params}
    kind = str(merged.get("rope_type", merged.get("type", "default")) or "default").lower()
    return theta, ({} if kind == "default" else {**merged, "rope_type": kind})


def llama3_rope_factors(config: dict[str, Any], head_dim: int) -> np.ndarray:
    """Llama 3.1's frequency-dependent RoPE scaling as llama.cpp's `rope_freqs` tensor (one divisor per frequency)."""
    theta, p = rope_settings(config)
    factor, low, high = float(p.get("factor", 8.0)), float(p.get("low_freq_factor", 1.0)), \
        float(p.get("high_freq_factor", 4.0))
    old_ctx = float(p.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def write_llama_gguf(model: PreTrainedModel, config: dict[str, Any], vocab: GGUFVocab, path: Path, *,
                     out_type: str = "f16", name: str = "ct-chat", progress: Progress | None = None) -> Path:
    """Write `model` (a merged LlamaForCausalLM / MistralForCausalLM) with `vocab` as a GGUF of `out_type`."""
    try:
        import gguf
    except ImportError as exc:
        raise MissingDependency("Writing GGUF files needs the gguf package (it comes with llama-cpp-python): "
                                "pip install gguf") from exc
    if out_type not in OUT_TYPES:
        raise ValueError(f"out_type must be one of {OUT_TYPES}")
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    n_embd = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or n_embd // n_head)
    state = model.state_dict()
    n_vocab = int(state["model.embed_tokens.weight"].shape[0])
    if len(vocab.tokens) != n_vocab:
        raise EngineError(f"Internal: vocabulary of {len(vocab.tokens)} tokens for {n_vocab} embedding rows.")
    theta, scaling = rope_settings(config)
    tied = "lm_head.weight" not in state or (
        state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr())

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name(name)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(int(config.get("max_position_embeddings", 4096)))
    writer.add_embedding_length(n_embd)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    if head_dim != n_embd // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    extra: dict[str, np.ndarray] = {}
    kind = scaling.get("rope_type")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "llama3":
        extra["rope_freqs.weight"] = llama3_rope_factors(config, head_dim)
    elif kind:
        raise UnsupportedModel(f"RoPE scaling {kind!r} of this base model is not supported by the converter "
                               "(supported: none, linear, llama3).")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if out_type == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    vocab.write_to(writer)

    def convert(key: str) -> np.ndarray:
        t = state[key].detach().to("cpu", torch.float32)
        if ".self_attn.q_proj." in key:
            t = permute_for_rope(t, n_head)
        elif ".self_attn.k_proj." in key:
            t = permute_for_rope(t, n_head_kv)
        keep_f32 = out_type == "f32" or t.ndim == 1
        return t.numpy().astype(np.float32 if keep_f32 else np.float16, copy=False)

    plan = [(hf_to_gguf_name(k), k) for k in state if not (tied and k == "lm_head.weight")
            and not k.endswith("rotary_emb.inv_freq")]
    for gguf_name, key in plan:
        shape = tuple(state[key].shape)
        dtype = np.float32 if (out_type == "f32" or len(shape) == 1) else np.float16
        writer.add_tensor_info(gguf_name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    for gguf_name, arr in extra.items():
        writer.add_tensor_info(gguf_name, arr.shape, arr.dtype, arr.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for n, (gguf_name, key) in enumerate(plan):
        writer.write_tensor_data(convert(key))
        if progress and (n % 16 == 0 or n == len(plan) - 1):
            progress(f"writing {out_type} GGUF: tensor {n + 1}/{len(plan)} ({gguf_name})")
    for arr in extra.values():
        writer.write_tensor_data(arr)
    writer.close()
    return path


def quantize_gguf(src: Path, dst: Path, quant: str, *, threads: int = 0) -> Path:
    """Quantize `src` (f32/f16 GGUF) to `dst` with llama.cpp's `llama_model_quantize` (q8_0 or q4_k_m)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependency("Quantizing needs llama-cpp-python: pip install llama-cpp-python") from exc
    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    if quant not in ftypes:
        raise ValueError(f"quant must be one of {tuple(ftypes)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quant]
    params.nthread = threads
    log = logging.getLogger("llama-cpp-python")  # llama-cpp-python routes llama.cpp's log through this level
    level = log.level
    log.setLevel(logging.ERROR)  # one line per tensor otherwise
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        log.setLevel(level)
    if rc != 0 or not dst.is_file():
        raise EngineError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc}; see the log above).")
    return dst


def iter_gguf_tensor_types(path: Path) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(name, ggml type, shape) of each tensor in a GGUF file — for tests and `ctdesk` diagnostics."""
    import gguf

    for t in gguf.GGUFReader(str(path)).tensors:
        yield t.name, t.tensor_type.name, tuple(int(x) for x in t.shape)
