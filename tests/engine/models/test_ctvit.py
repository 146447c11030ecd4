"""CT-ViT encoder: op order against an independent functional re-derivation of upstream_models.md §a, VQ codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.models.ctvit import CTViT

CFG = dict(dim=32, codebook_size=64, image_size=32, patch_size=8, temporal_patch_size=4, spatial_depth=2,
           temporal_depth=2, dim_head=8, heads=2)


def _ln(x, gamma, beta=None):
    return F.layer_norm(x, x.shape[-1:], gamma, beta if beta is not None else torch.zeros_like(gamma))


def _block(x, sd, p, shape, heads, bias=None):
    """One transformer layer written from the reference text: PEG (raw reshape), cosine attention, GEGLU FF."""
    b, t, h, w = shape
    n, seq, d = x.shape
    g = x.reshape(b, t, h, w, d).permute(0, 4, 1, 2, 3)  # raw reshape — the temporal stage's quirk included
    g = F.pad(g, (1, 1, 1, 1, 2, 0))
    g = F.conv3d(g, sd[p + "0.dsconv.weight"], sd[p + "0.dsconv.bias"], groups=d)
    x = g.permute(0, 2, 3, 4, 1).reshape(n, seq, d) + x
    xn = _ln(x, sd[p + "1.norm.gamma"], sd[p + "1.norm.beta"])
    q = xn @ sd[p + "1.to_q.weight"].T
    kv = x @ sd[p + "1.to_kv.weight"].T  # k, v from the un-normalised input
    k, v = kv[..., : kv.shape[-1] // 2], kv[..., kv.shape[-1] // 2 :]
    split = lambda z: z.reshape(n, seq, heads, -1).permute(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    q = F.normalize(q, dim=-1) * sd[p + "1.q_scale"]
    k = F.normalize(k, dim=-1) * sd[p + "1.k_scale"]
    sim = torch.einsum("nhid,nhjd->nhij", q, k) * 8
    if bias is not None:
        sim = sim + bias
    out = torch.einsum("nhij,nhjd->nhid", sim.softmax(-1), v).permute(0, 2, 1, 3).reshape(n, seq, -1)
    x = out @ sd[p + "1.to_out.weight"].T + x
    hdn = F.layer_norm(x, x.shape[-1:], sd[p + "3.0.weight"], sd[p + "3.0.bias"]) @ sd[p + "3.1.weight"].T
    a, gate = hdn.chunk(2, dim=-1)
    return (F.gelu(gate) * a) @ sd[p + "3.4.weight"].T + x


def reference_encode(sd: dict[str, torch.Tensor], video: torch.Tensor, cfg: dict) -> torch.Tensor:
    pt, p, heads, d = cfg["temporal_patch_size"], cfg["patch_size"], cfg["heads"], cfg["dim"]
    b, c, D, H, W = video.shape
    t, h, w = D // pt, H // p, W // p
    x = video.reshape(b, c, t, pt, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t, h, w, -1)
    x = F.layer_norm(x, x.shape[-1:], sd["to_patch_emb.1.weight"], sd["to_patch_emb.1.bias"])
    x = x @ sd["to_patch_emb.2.weight"].T + sd["to_patch_emb.2.bias"]
    x = F.layer_norm(x, x.shape[-1:], sd["to_patch_emb.3.weight"], sd["to_patch_emb.3.bias"])
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ii.flatten(), jj.flatten()], -1).float()
    rel = pos[:, None] - pos[None]
    rel = torch.sign(rel) * torch.log(rel.abs() + 1)
    rel = F.leaky_relu(rel @ sd["spatial_rel_pos_bias.net.0.0.weight"].T + sd["spatial_rel_pos_bias.net.0.0.bias"], 0.1)
    rel = F.leaky_relu(rel @ sd["spatial_rel_pos_bias.net.1.0.weight"].T + sd["spatial_rel_pos_bias.net.1.0.bias"], 0.1)
    bias = (rel @ sd["spatial_rel_pos_bias.net.2.weight"].T + sd["spatial_rel_pos_bias.net.2.bias"]).permute(2, 0, 1)
    x = x.reshape(b * t, h * w, d)
    for i in range(cfg["spatial_depth"]):
        x = _block(x, sd, f"enc_spatial_transformer.layers.{i}.", (b, t, h, w), heads, bias)
    x = _ln(x, sd["enc_spatial_transformer.norm_out.gamma"], sd["enc_spatial_transformer.norm_out.beta"])
    x = x.reshape(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
    for i in range(cfg["temporal_depth"]):
        x = _block(x, sd, f"enc_temporal_transformer.layers.{i}.", (b, t, h, w), heads)
    x = _ln(x, sd["enc_temporal_transformer.norm_out.gamma"], sd["enc_temporal_transformer.norm_out.beta"])
    x = x.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4).reshape(b, t * h * w, d)
    embed = sd["vq._codebook.embed"][0]
    idx = (F.normalize(x, dim=-1) @ F.normalize(embed, dim=-1).T).argmax(-1)
    return embed[idx].reshape(b, t, h, w, d)


def _seeded_model() -> CTViT:
    torch.manual_seed(0)
    model = CTViT(**CFG).eval()
    with torch.no_grad():  # non-trivial values everywhere the default init leaves ones/zeros
        for name, param in model.named_parameters():
            if name.endswith(("q_scale", "k_scale", "gamma")) or name.endswith((".bias",)):
                param.add_(torch.randn_like(param) * 0.3)
        model.vq._codebook.embed.mul_(torch.rand(1, 64, 1) + 0.5)  # EMA codebooks are not unit-norm
    return model


def test_encoder_matches_an_independent_rederivation_of_the_upstream_op_order() -> None:
    model = _seeded_model()
    video = torch.randn(2, 1, 8, 32, 32)
    with torch.no_grad():
        ours, codes = model(video, return_codes=True)
        ref = reference_encode(model.state_dict(), video, CFG)
    assert ours.shape == (2, 2, 4, 4, 32)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)  # both pick identical raw codebook rows
    assert len(torch.unique(codes)) > 4, "the input must exercise several codes"


def test_output_rows_are_raw_codebook_rows_not_renormalised() -> None:
    model = _seeded_model()
    with torch.no_grad():
        out, codes = model(torch.randn(1, 1, 8, 32, 32), return_codes=True)
    embed = model.vq._codebook.embed[0]
    torch.testing.assert_close(out.reshape(-1, 32), embed[codes.reshape(-1)])
    assert not torch.allclose(out.norm(dim=-1), torch.ones(1))


def test_temporal_peg_quirk_matters() -> None:
    """A 'proper' (b h w) t → b t h w rearrange in the temporal PEG gives other tokens: the quirk is load-bearing."""
    model = _seeded_model()
    video = torch.randn(1, 1, 8, 32, 32)
    sd = model.state_dict()
    with torch.no_grad():
        quirky = reference_encode(sd, video, CFG)
        original_block = _block

        def proper_block(x, sd_, p, shape, heads, bias=None):
            if "temporal" not in p:
                return original_block(x, sd_, p, shape, heads, bias)
            b, t, h, w = shape
            d = x.shape[-1]
            # re-order (b h w) t d into the (b t h w) memory order the raw reshape assumes, run, and undo
            y = x.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4).reshape(b * t, h * w, d)
            g = y.reshape(b, t, h, w, d).permute(0, 4, 1, 2, 3)
            g = F.pad(g, (1, 1, 1, 1, 2, 0))
            g = F.conv3d(g, sd_[p + "0.dsconv.weight"], sd_[p + "0.dsconv.bias"], groups=d)
            peg = g.permute(0, 2, 3, 4, 1).reshape(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(x.shape)
            zero_peg = {**sd_, p + "0.dsconv.weight": torch.zeros_like(sd_[p + "0.dsconv.weight"]),
                        p + "0.dsconv.bias": torch.zeros_like(sd_[p + "0.dsconv.bias"])}
            return original_block(x + peg, zero_peg, p, shape, heads, bias)

        globals()["_block"] = proper_block
        try:
            proper = reference_encode(sd, video, CFG)
        finally:
            globals()["_block"] = original_block
        ours = model(video)
    assert torch.equal(ours, quirky)
    assert not torch.equal(ours, proper)


def test_sdpa_path_gives_the_same_codes_as_the_explicit_fp32_path() -> None:
    model = _seeded_model()
    video = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        model.set_sdpa(True)
        _, fast = model(video, return_codes=True)
        model.set_sdpa(False)
        _, plain = model(video, return_codes=True)
    assert torch.equal(fast, plain)


def test_wrong_input_size_is_a_clear_error() -> None:
    model = CTViT(**CFG)
    try:
        model(torch.zeros(1, 1, 8, 30, 32))
    except ValueError as exc:
        assert "32×32" in str(exc)
    else:
        raise AssertionError("expected a ValueError")
