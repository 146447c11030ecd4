"""CT-CHAT's multimodal projector: CT-ViT tokens → 256 LLM input embeddings ("attn_pool+mlp2x_gelu").

Mirrors `llava/model/multimodal_projector/{builder.py, coca_attentional_pooler.py}` of
github.com/ibrahimethemhamamci/CT-CHAT @ 33c9b97 (facts: ../shared/reference/upstream_models.md §f; keys:
ctchat_projector_manifest.json). Attention pooling (256 learned queries, 8 heads × 64, CoCa style) → LayerNorm →
Linear(512, H) → GELU → Linear(H, H). Loads `mm_projector.bin`, `non_lora_trainables.bin` or safetensors strictly.

Upstream hard-codes the token width (512, CT-ViT's dim) and 256 queries. A projector trained on a smaller CT-CLIP
(the demo pack's tokens are 32 wide) or with fewer queries keeps the same layout and key names; `load_projector`
reads both sizes from the weight shapes, so official files load exactly as before.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import CheckpointMismatch

CONTEXT_DIM = 512  # mm_hidden_size = mm_context_size, hard-coded upstream
NUM_QUERIES = 256
HEADS = 8
_PREFIXES = ("base_model.model.model.mm_projector.", "model.mm_projector.", "mm_projector.")


class AttentionalPooler(nn.Module):
    """256 learned queries attend over all image tokens (no positions: permutation-invariant over tokens)."""

    def __init__(self, d_model: int = CONTEXT_DIM, context_dim: int = CONTEXT_DIM, n_head: int = HEADS,
                 n_queries: int = NUM_QUERIES) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads = n_head
        dim_head = d_model // n_head
        self.scale = dim_head**-0.5
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.ln_k(x)
        q = self.to_q(self.ln_q(self.query))  # (Q, d)
        k, v = self.to_kv(x).chunk(2, dim=-1)  # (B, N, d) each
        q = q.reshape(1, -1, self.heads, q.shape[-1] // self.heads).transpose(1, 2).expand(b, -1, -1, -1)
        k = k.reshape(b, n, self.heads, -1).transpose(1, 2)
        v = v.reshape(b, n, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # softmax over the N image tokens
        return self.to_out(out.transpose(1, 2).reshape(b, -1, q.shape[-1] * self.heads))


class CTChatProjector(nn.Module):
    """(B, t, h, w, C) CT-ViT tokens, or (B, N, C) → (B, n_queries, H) embeddings for the LLM (upstream: C = 512,
    256 queries; the pooler's width equals C, as upstream's mm_hidden_size = mm_context_size)."""

    def __init__(self, llm_hidden_size: int, *, context_dim: int = CONTEXT_DIM, n_queries: int = NUM_QUERIES) -> None:
        super().__init__()
        if context_dim % HEADS:
            raise ValueError(f"context_dim must be a multiple of the {HEADS} attention heads, got {context_dim}")
        self.attn_pool = AttentionalPooler(d_model=context_dim, context_dim=context_dim, n_queries=n_queries)
        self.ln = nn.LayerNorm(context_dim)
        self.proj = nn.Sequential(nn.Linear(context_dim, llm_hidden_size), nn.GELU(),
                                  nn.Linear(llm_hidden_size, llm_hidden_size))
        self.llm_hidden_size = llm_hidden_size
        self.context_dim = context_dim
        self.n_queries = n_queries

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim == 5:
            tokens = tokens.flatten(1, 3)  # (B, t·h·w, C), row-major over (t, h, w) as upstream's flatten(1, 3)
        return self.proj(self.ln(self.attn_pool(tokens)))


def build_projector(llm_hidden_size: int, *, context_dim: int = CONTEXT_DIM,
                    n_queries: int = NUM_QUERIES) -> CTChatProjector:
    return CTChatProjector(llm_hidden_size, context_dim=context_dim, n_queries=n_queries)


def load_projector(path: str | os.PathLike[str]) -> CTChatProjector:
    """Read `.bin`/`.pt` (weights only) or `.safetensors` with bare or CT-CHAT-prefixed keys; infer H, the token
    width and the number of queries from the shapes; load strictly."""
    from engine.models.checkpoints import read_state_dict

    path = Path(path)
    state = read_state_dict(path)
    bare: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key.startswith(("attn_pool.", "ln.", "proj.")):
            bare[key] = value
    if "proj.0.weight" not in bare:
        sample = ", ".join(sorted(state)[:3])
        raise CheckpointMismatch(f"{path.name} holds no CT-CHAT projector (attn_pool/ln/proj keys); found {sample}…")
    query = bare.get("attn_pool.query")
    context_dim = int(query.shape[1]) if query is not None and query.ndim == 2 else CONTEXT_DIM
    n_queries = int(query.shape[0]) if query is not None and query.ndim == 2 else NUM_QUERIES
    if context_dim % HEADS:
        raise CheckpointMismatch(f"{path.name}: the projector's width {context_dim} is not a multiple of {HEADS} "
                                 "attention heads; it is not a CT-CHAT attn_pool+mlp2x_gelu projector.")
    projector = build_projector(int(bare["proj.0.weight"].shape[0]), context_dim=context_dim, n_queries=n_queries)
    expected = projector.state_dict()
    missing, unexpected = sorted(set(expected) - set(bare)), sorted(set(bare) - set(expected))
    wrong = sorted(k for k in set(bare) & set(expected) if bare[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointMismatch(
            f"{path.name} is not a CT-CHAT attn_pool+mlp2x_gelu projector: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, other shapes {wrong[:3]}."
        )
    projector.load_state_dict({k: v.float() for k, v in bare.items()}, strict=True)
    return projector.eval()
