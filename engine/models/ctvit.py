"""CT-ViT image encoder — the encoder half of upstream's CTViT, as CT-CLIP v2 uses it.

Mirrors `transformer_maskgit/ctvit.py` + `attention.py` of github.com/ibrahimethemhamamci/CT-CLIP @ a2a155c, with
vector-quantize-pytorch 1.1.2's cosine-sim codebook (facts: ../shared/reference/upstream_models.md §a). Attribute
names equal the checkpoint keys (`to_patch_emb`, `enc_spatial_transformer`, `vq._codebook.embed`…) so official
weights load strictly; upstream quirks are reproduced and labelled. The decoder/pixel heads and the unused
first-frame patch embedding are not built: their keys are dropped on load (engine/models/checkpoints.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def l2norm(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, dim=-1)


class LayerNorm(nn.Module):
    """Upstream's LayerNorm: learned `gamma`, fixed zero `beta` buffer (saved in checkpoints), eps 1e-5."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class PatchRearrange(nn.Module):
    """`b c (t pt) (h p) (w p) -> b t h w (c pt p p)` — index 0 of `to_patch_emb`, no parameters."""

    def __init__(self, patch_size: int, temporal_patch_size: int) -> None:
        super().__init__()
        self.p, self.pt = patch_size, temporal_patch_size

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = video.shape
        p, pt = self.p, self.pt
        x = video.reshape(b, c, d // pt, pt, h // p, p, w // p, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (b, t, h, w, c, pt, p, p)
        return x.reshape(b, d // pt, h // p, w // p, c * pt * p * p)


class ContinuousPositionBias(nn.Module):
    """SwinV2-style bias from log-spaced 2-D relative positions of the spatial token grid → (heads, n, n)."""

    def __init__(self, *, dim: int, heads: int, num_dims: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(num_dims, dim), nn.LeakyReLU(0.1))])
        for _ in range(layers - 1):
            self.net.append(nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)))
        self.net.append(nn.Linear(dim, heads))

    def forward(self, h: int, w: int) -> torch.Tensor:
        # Upstream runs the MLP on all (h·w)² position pairs (576² × 512 activations: 174 GFLOP and 1.4 GB at full
        # size). Only (2h−1)(2w−1) distinct offsets exist, and the MLP acts on each pair independently, so run it
        # on the distinct offsets and gather: the same values for 0.1 % of the work.
        device = self.net[-1].weight.device
        offsets = torch.stack(torch.meshgrid(torch.arange(-(h - 1), h, device=device),
                                             torch.arange(-(w - 1), w, device=device), indexing="ij"), dim=-1)
        table = offsets.reshape(-1, 2).float()  # ((2h−1)(2w−1), 2)
        table = torch.sign(table) * torch.log(table.abs() + 1)
        for layer in self.net:
            table = layer(table)
        rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        rows, cols = rows.reshape(-1), cols.reshape(-1)  # token positions, row-major
        index = (rows[:, None] - rows[None, :] + h - 1) * (2 * w - 1) + (cols[:, None] - cols[None, :] + w - 1)
        return table[index].permute(2, 0, 1)  # (heads, n, n)


class PEG(nn.Module):
    """Position-generating depthwise 3-D conv over the token grid, causal (front-padded) along t."""

    def __init__(self, dim: int, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        orig_shape = x.shape
        # upstream quirk: a raw reshape to (b, t, h, w, d). In the temporal stage memory order is (b h w) t, so
        # the conv sees a scrambled grid — reproduced on purpose, the checkpoints were trained that way.
        x = x.reshape(*shape, -1).permute(0, 4, 1, 2, 3)  # (b, d, t, h, w)
        frame_padding = (2, 0) if self.causal else (1, 1)
        x = F.pad(x, (1, 1, 1, 1, *frame_padding), value=0.0)
        x = self.dsconv(x)
        return x.permute(0, 2, 3, 4, 1).reshape(orig_shape)


class Attention(nn.Module):
    """Cosine-sim attention: scale 8, learned q/k scales; k and v come from the UN-normalised input (upstream)."""

    def __init__(self, dim: int, *, dim_head: int = 64, heads: int = 8, num_null_kv: int = 0,
                 scale: float = 8.0) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads, self.scale, self.num_null_kv = heads, scale, num_null_kv
        self.norm = LayerNorm(dim)
        self.context_norm = LayerNorm(dim)  # cross-attention only; unused here, present in checkpoints
        self.null_kv = nn.Parameter(torch.randn(heads, 2 * num_null_kv, dim_head))  # (8, 0, 32): no effect
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.use_sdpa = True  # same math as the explicit path; agreement is tested on VQ codes

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(x).chunk(2, dim=-1)  # upstream quirk: kv from x, not norm(x)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (b, h, n, dh)
        if self.num_null_kv:
            nk, nv = self.null_kv.reshape(self.heads, self.num_null_kv, 2, -1).unbind(dim=-2)
            k = torch.cat((nk.expand(b, -1, -1, -1), k), dim=-2)
            v = torch.cat((nv.expand(b, -1, -1, -1), v), dim=-2)
            if attn_bias is not None:
                attn_bias = F.pad(attn_bias, (self.num_null_kv, 0), value=0.0)
        q = l2norm(q) * self.q_scale
        k = l2norm(k) * self.k_scale
        if self.use_sdpa:
            bias = None if attn_bias is None else attn_bias.to(q.dtype).unsqueeze(0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            sim = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
            if attn_bias is not None:
                sim = sim + attn_bias
            out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def feed_forward(dim: int, mult: float = 4, dropout: float = 0.0) -> nn.Sequential:
    inner = int(mult * (2 / 3) * dim)  # 1365 for dim 512
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, inner * 2, bias=False), GEGLU(), nn.Dropout(dropout),
        nn.Linear(inner, dim, bias=False),
    )


class Transformer(nn.Module):
    """Per layer: x += PEG(x); x += Attn(x); x += FF(x) — then `norm_out`. Index 2 (cross-attention) is empty."""

    def __init__(self, dim: int, *, depth: int, dim_head: int, heads: int, ff_dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PEG(dim, causal=True), Attention(dim, dim_head=dim_head, heads=heads), None,
                           feed_forward(dim, dropout=ff_dropout)])
            for _ in range(depth)
        )
        self.norm_out = LayerNorm(dim)
        self.between_layers: Callable[[], None] | None = None  # cooperative cancellation hook
        self.gradient_checkpointing = False  # training: recompute each layer in backward to save activations

    def forward(
        self, x: torch.Tensor, *, video_shape: tuple[int, int, int, int], attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(_run_layer, layer, x, video_shape, attn_bias, use_reentrant=False)
            else:
                x = _run_layer(layer, x, video_shape, attn_bias)
            if self.between_layers is not None:
                self.between_layers()
        return self.norm_out(x)


def _run_layer(layer: nn.ModuleList, x: torch.Tensor, video_shape: tuple[int, int, int, int],
               attn_bias: torch.Tensor | None) -> torch.Tensor:
    peg, attn, _, ff = layer  # type: ignore[misc]
    x = peg(x, shape=video_shape) + x
    x = attn(x, attn_bias=attn_bias) + x
    return ff(x) + x


class Codebook(nn.Module):
    """vector-quantize-pytorch 1.1.2 CosineSimCodebook buffers: `embed` (1, K, D), `cluster_size`, `initted`."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("initted", torch.tensor([True], dtype=torch.float32))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", l2norm(torch.randn(1, codebook_size, dim)))


class VectorQuantize(nn.Module):
    """Cosine-sim nearest code (argmax, no Gumbel noise at inference); returns the RAW stored codebook rows.

    In training mode (with gradients) it behaves as vector-quantize-pytorch 1.1.2 does in training: the output
    values are the same codebook rows, gradients pass straight through to the encoder, and the codebook follows an
    exponential moving average (decay 0.8) of the normalised vectors assigned to each code.
    """

    def __init__(self, dim: int, codebook_size: int, chunk_tokens: int = 2048, decay: float = 0.8) -> None:
        super().__init__()
        self._codebook = Codebook(dim, codebook_size)
        self.chunk_tokens = chunk_tokens  # bounds the (tokens × codes) similarity matrix's memory
        self.decay = decay

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) → (B, N) code indices. Computed in fp32 whatever the input dtype: argmax near-ties matter."""
        embed_n = l2norm(self._codebook.embed[0].float())
        out = []
        for chunk in x.float().split(self.chunk_tokens, dim=1):
            out.append((l2norm(chunk) @ embed_n.T).argmax(dim=-1))
        return torch.cat(out, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.codes(x)
        quantised = self._codebook.embed[0][idx]
        if self.training and torch.is_grad_enabled():
            self._ema_update(x.detach(), idx)
            quantised = x + (quantised - x).detach()  # straight-through estimator
        return quantised, idx

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        embed = self._codebook.embed[0]  # (K, D)
        flat = l2norm(x.float().reshape(-1, x.shape[-1]))
        codes = idx.reshape(-1)
        counts = torch.bincount(codes, minlength=embed.shape[0]).float()
        sums = torch.zeros_like(embed).index_add_(0, codes, flat)
        used = counts > 0
        means = l2norm(sums[used] / counts[used, None])
        self._codebook.cluster_size[0].lerp_(counts, 1 - self.decay)
        embed[used] = l2norm(torch.lerp(embed[used], means, 1 - self.decay))


class CTViT(nn.Module):
    """The CT-ViT encoder: (B, 1, D, H, W) in [−1, 1] → quantised tokens (B, t, h, w, dim)."""

    def __init__(
        self,
        *,
        dim: int,
        codebook_size: int,
        image_size: int | tuple[int, int],
        patch_size: int,
        temporal_patch_size: int,
        spatial_depth: int,
        temporal_depth: int,
        dim_head: int = 64,
        heads: int = 8,
        channels: int = 1,
        ff_dropout: float = 0.0,
        **_unused: object,  # upstream's decoder/GAN arguments (use_vgg_and_gan, discr_layers, …) do not apply
    ) -> None:
        super().__init__()
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.patch_size, self.temporal_patch_size = patch_size, temporal_patch_size
        patch_dim = channels * patch_size * patch_size * temporal_patch_size
        self.to_patch_emb = nn.Sequential(
            PatchRearrange(patch_size, temporal_patch_size), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim),
            nn.LayerNorm(dim),
        )
        self.spatial_rel_pos_bias = ContinuousPositionBias(dim=dim, heads=heads)
        self.enc_spatial_transformer = Transformer(dim, depth=spatial_depth, dim_head=dim_head, heads=heads,
                                                   ff_dropout=ff_dropout)
        self.enc_temporal_transformer = Transformer(dim, depth=temporal_depth, dim_head=dim_head, heads=heads,
                                                    ff_dropout=ff_dropout)
        self.vq = VectorQuantize(dim, codebook_size)

    def token_grid(self, depth: int) -> tuple[int, int, int]:
        """(t, h, w) token counts for an input of `depth` slices."""
        return (depth // self.temporal_patch_size, self.image_size[0] // self.patch_size,
                self.image_size[1] // self.patch_size)

    def set_sdpa(self, enabled: bool) -> None:
        for m in self.modules():
            if isinstance(m, Attention):
                m.use_sdpa = enabled

    def forward(self, video: torch.Tensor, *,
                return_codes: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Quantised tokens (B, t, h, w, dim); with `return_codes`, also the (B, t·h·w) code indices."""
        b, _, d, h, w = video.shape
        if (h, w) != self.image_size or d % self.temporal_patch_size:
            raise ValueError(
                f"CT-ViT expects slices {self.image_size[0]}×{self.image_size[1]} and a depth divisible by "
                f"{self.temporal_patch_size}; got {tuple(video.shape)}"
            )
        tokens = self.to_patch_emb(video)  # (B, t, h, w, dim)
        _, t, hh, ww, dim = tokens.shape
        video_shape = (b, t, hh, ww)
        attn_bias = self.spatial_rel_pos_bias(hh, ww)  # (heads, h·w, h·w)
        x = tokens.reshape(b * t, hh * ww, dim)
        x = self.enc_spatial_transformer(x, video_shape=video_shape, attn_bias=attn_bias)
        x = x.reshape(b, t, hh, ww, dim).permute(0, 2, 3, 1, 4).reshape(b * hh * ww, t, dim)  # (b h w) t d
        x = self.enc_temporal_transformer(x, video_shape=video_shape)
        x = x.reshape(b, hh, ww, t, dim).permute(0, 3, 1, 2, 4).reshape(b, t * hh * ww, dim)  # b (t h w) d
        quantised, codes = self.vq(x)
        quantised = quantised.reshape(b, t, hh, ww, dim)
        return (quantised, codes) if return_codes else quantised
