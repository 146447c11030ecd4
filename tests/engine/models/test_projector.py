"""CT-CHAT projector: keys vs the upstream manifest, op order, flattening, loading CT-CHAT's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.errors import CheckpointMismatch
from engine.models.projector import build_projector, load_projector

MANIFEST = Path(__file__).resolve().parents[3].parent / "shared" / "reference" / "ctchat_projector_manifest.json"


@pytest.mark.skipif(not MANIFEST.is_file(), reason="upstream manifest (shared/ beside the checkout) not present")
@pytest.mark.parametrize("variant", ["llama3.1_8b", "mistral_7b", "vicuna_13b", "llama3.1_70b"])
def test_keys_and_shapes_match_the_upstream_builder(variant: str) -> None:
    spec = json.loads(MANIFEST.read_text())["variants"][variant]
    with torch.device("meta"):
        projector = build_projector(spec["llm_hidden_size"])
    ours = {k: list(v.shape) for k, v in projector.state_dict().items()}
    assert ours == {k: v["shape"] for k, v in spec["state_dict"].items()}
    assert sum(p.numel() for p in projector.parameters()) == spec["num_parameters"]


def reference_projector(sd: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Written from upstream_models.md §f: flatten(1,3), CoCa attentional pooling 8×64, LN, Linear-GELU-Linear."""
    x = tokens.flatten(1, 3)
    b, n, _ = x.shape
    x = F.layer_norm(x, (512,), sd["attn_pool.ln_k.weight"], sd["attn_pool.ln_k.bias"])
    q = F.layer_norm(sd["attn_pool.query"], (512,), sd["attn_pool.ln_q.weight"], sd["attn_pool.ln_q.bias"])
    q = q @ sd["attn_pool.to_q.weight"].T
    kv = x @ sd["attn_pool.to_kv.weight"].T
    k, v = kv[..., :512], kv[..., 512:]
    q = q.reshape(256, 8, 64).permute(1, 0, 2)
    k = k.reshape(b, n, 8, 64).permute(0, 2, 1, 3)
    v = v.reshape(b, n, 8, 64).permute(0, 2, 1, 3)
    sim = torch.einsum("hid,bhjd->bhij", q * 64**-0.5, k)
    sim = sim - sim.amax(dim=-1, keepdim=True)
    out = torch.einsum("bhij,bhjd->bhid", sim.softmax(-1), v).permute(0, 2, 1, 3).reshape(b, 256, 512)
    out = out @ sd["attn_pool.to_out.weight"].T
    out = F.layer_norm(out, (512,), sd["ln.weight"], sd["ln.bias"])
    out = F.gelu(out @ sd["proj.0.weight"].T + sd["proj.0.bias"])
    return out @ sd["proj.2.weight"].T + sd["proj.2.bias"]


def test_output_matches_an_independent_rederivation() -> None:
    torch.manual_seed(0)
    projector = build_projector(96).eval()
    tokens = torch.randn(2, 3, 4, 5, 512)
    with torch.no_grad():
        out = projector(tokens)
        torch.testing.assert_close(out, reference_projector(projector.state_dict(), tokens), rtol=1e-4, atol=1e-5)
    assert out.shape == (2, 256, 96)


def test_grid_input_equals_flattened_row_major_tokens_and_order_does_not_matter() -> None:
    torch.manual_seed(1)
    projector = build_projector(64).eval()
    grid = torch.randn(1, 2, 3, 4, 512)
    flat = grid.reshape(1, 24, 512)
    with torch.no_grad():
        torch.testing.assert_close(projector(grid), projector(flat))
        shuffled = flat[:, torch.randperm(24)]
        torch.testing.assert_close(projector(shuffled), projector(flat), rtol=1e-4, atol=1e-5)  # no positions


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [("", ".safetensors"), ("model.mm_projector.", ".bin"), ("base_model.model.model.mm_projector.", ".bin")],
)
def test_loads_bare_and_ctchat_prefixed_files_and_infers_hidden_size(tmp_path: Path, prefix: str, suffix: str) -> None:
    torch.manual_seed(2)
    projector = build_projector(128)
    state = {prefix + k: v for k, v in projector.state_dict().items()}
    path = tmp_path / f"proj{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        if prefix.startswith("base_model"):  # non_lora_trainables.bin may carry other trainables too
            state["base_model.model.model.embed_tokens.weight"] = torch.zeros(4, 8)
        torch.save(state, path)
    loaded = load_projector(path)
    assert loaded.llm_hidden_size == 128
    tokens = torch.randn(1, 10, 512)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), projector.eval()(tokens))


def test_a_file_without_a_projector_is_refused(tmp_path: Path) -> None:
    torch.save({"model.layers.0.weight": torch.zeros(2)}, tmp_path / "adapter.bin")
    with pytest.raises(CheckpointMismatch, match="no CT-CHAT projector"):
        load_projector(tmp_path / "adapter.bin")


def test_a_projector_for_narrower_tokens_and_fewer_queries_loads_from_its_shapes(tmp_path: Path) -> None:
    """The demo pack's CT-CLIP gives 32-wide tokens; its projector keeps upstream's keys with smaller shapes."""
    torch.manual_seed(3)
    projector = build_projector(576, context_dim=32, n_queries=16).eval()
    torch.save({f"base_model.model.model.mm_projector.{k}": v for k, v in projector.state_dict().items()},
               tmp_path / "non_lora_trainables.bin")
    loaded = load_projector(tmp_path / "non_lora_trainables.bin")
    assert (loaded.context_dim, loaded.n_queries, loaded.llm_hidden_size) == (32, 16, 576)
    grid = torch.randn(1, 24, 24, 24, 32)  # the demo CT-CLIP's token grid
    with torch.no_grad():
        torch.testing.assert_close(loaded(grid), projector(grid))
    assert loaded(grid).shape == (1, 16, 576)
    with pytest.raises(ValueError, match="multiple of the 8 attention heads"):
        build_projector(64, context_dim=20)
