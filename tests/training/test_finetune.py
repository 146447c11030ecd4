"""VocabFine and ClassFine: upstream's losses, training lowers them, runs resume, exports load in the engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from builders import minilm_dir, tiny_config
from safetensors.torch import load_file
from torch.utils.data import Dataset

from engine.findings import NEGATIVE_PROMPT, POSITIVE_PROMPT
from engine.models.ctclip import build_ctclip
from engine.models.loading import load_ctclip, resolve_spec, save_bundle
from engine.resources import ct_rate_labels
from training.finetune import FinetuneConfig, finetune, true_false_logits, vocabfine_loss


class TinyStudies(Dataset):  # type: ignore[type-arg]
    """Random inputs for the tiny CT-ViT (1, 8, 32, 32) and labels, as CTReportDataset yields them: every study has
    findings 0, 2, 4… (a pattern a few steps can learn; swapping true and false statements would unlearn it)."""

    def __init__(self, n: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand((n, 1, 8, 32, 32), generator=g) * 2 - 1
        self.labels = (torch.arange(18) % 2 == 0).float().expand(n, 18).clone()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, torch.Tensor]:
        return self.x[i], "", self.labels[i]


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CT-CLIP bundle with a one-layer random text tower (MiniLM's vocabulary): fine-tunes in seconds."""
    config = tiny_config()
    config["bert"] = dict(config["bert"], hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64)
    config["clip"]["dim_text"] = 32
    torch.manual_seed(0)
    model = build_ctclip(config["vit"], config["clip"], config["bert"]).eval()
    return save_bundle(model, tmp_path_factory.mktemp("base"), config=config, tokenizer_src=minilm_dir(),
                       name="tiny-base")


def _config(tmp_path: Path, base: Path, mode: str, **kw: object) -> FinetuneConfig:
    defaults: dict[str, object] = dict(mode=mode, base=str(base), output_dir=str(tmp_path / mode), batch_size=2,
                                       num_workers=0, lr=1e-3, weight_decay=0.0, warmup_steps=1, max_steps=6,
                                       save_every=3, log_every=1, name=f"tiny-{mode}")
    return FinetuneConfig(**(defaults | kw))  # type: ignore[arg-type]


def _zero_shot_loss(bundle: Path, data: TinyStudies) -> float:
    """Mean VocabFine loss of a loaded bundle over `data`, with the engine's own prompts (eval mode)."""
    loaded = load_ctclip(resolve_spec(bundle), device=torch.device("cpu"))
    names = list(ct_rate_labels())
    tok = loaded.tokenizer([POSITIVE_PROMPT.format(n) for n in names] + [NEGATIVE_PROMPT.format(n) for n in names],
                           padding=True, return_tensors="pt")
    with torch.no_grad():
        text = loaded.clip.encode_text(tok["input_ids"], tok["attention_mask"])
        image, _ = loaded.clip.encode_image(data.x)
        logits = image @ text.T * loaded.clip.logit_scale
    return float(vocabfine_loss(*true_false_logits(logits[:, :18], logits[:, 18:], data.labels)))


def test_vocabfine_loss_is_mse_of_the_two_way_softmax_against_true_statement() -> None:
    logits_true = torch.tensor([[2.0, -1.0, 0.0]])
    logits_false = torch.tensor([[0.0, 0.5, 0.0]])
    # Hand computation: p_true = 1 / (1 + e^(f − t)); MSE([p, 1 − p], [1, 0]) = ((1 − p)² + (1 − p)²) / 2 = (1 − p)².
    expected = [(1 - 1 / (1 + math.exp(f - t))) ** 2 for t, f in [(2.0, 0.0), (-1.0, 0.5), (0.0, 0.0)]]
    assert expected[2] == pytest.approx(0.25)
    per = vocabfine_loss(logits_true, logits_false, reduction="none")
    torch.testing.assert_close(per, torch.tensor([expected]))
    assert float(vocabfine_loss(logits_true, logits_false)) == pytest.approx(sum(expected) / 3)
    masked = vocabfine_loss(logits_true, logits_false, mask=torch.tensor([[1.0, 0.0, 1.0]]))
    assert float(masked) == pytest.approx((expected[0] + expected[2]) / 2)
    # Upstream's form: softmax over the pair, then nn.MSELoss against [1, 0].
    pair = torch.softmax(torch.tensor([2.0, 0.0]), dim=0)
    assert float(torch.nn.functional.mse_loss(pair, torch.tensor([1.0, 0.0]))) == pytest.approx(expected[0])


def test_true_false_logits_put_the_true_statement_first() -> None:
    present, absent = torch.tensor([[3.0, 3.0]]), torch.tensor([[1.0, 1.0]])
    true, false = true_false_logits(present, absent, torch.tensor([[1.0, 0.0]]))
    assert true.tolist() == [[3.0, 1.0]] and false.tolist() == [[1.0, 3.0]]


def test_vocabfine_lowers_the_loss_resumes_and_exports_a_zero_shot_bundle(tmp_path: Path, base_bundle: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    data = TinyStudies()
    cfg = _config(tmp_path, base_bundle, "vocabfine", lr=1e-2, grad_clip=1.0, max_steps=30, save_every=15)
    bundle = finetune(cfg, dataset=data)
    logged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(logged) == 30
    assert _zero_shot_loss(bundle, data) < 0.6 * _zero_shot_loss(base_bundle, data)  # ≈ 0.25 → 0.11

    cfg.max_steps = 32  # a second launch resumes at step 30
    finetune(cfg, dataset=data)
    out = capsys.readouterr().out
    assert "resumed from" in out and "step 31/32" in out and "step 1/32" not in out

    loaded = load_ctclip(resolve_spec(bundle), device=torch.device("cpu"))
    assert loaded.kind == "zero-shot" and loaded.classifier is None
    base = load_file(str(base_bundle / "model.safetensors"))
    tuned = load_file(str(bundle / "model.safetensors"))
    assert set(base) == set(tuned)  # the zero-shot key layout, as CT_VocabFine_v2.pt
    assert not torch.equal(base["text_transformer.encoder.layer.0.attention.self.query.weight"],
                           tuned["text_transformer.encoder.layer.0.attention.self.query.weight"])  # end to end


def test_classfine_trains_the_head_only_and_exports_upstream_layout(tmp_path: Path, base_bundle: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    data = TinyStudies()
    cfg = _config(tmp_path, base_bundle, "classfine", lr=5e-2, max_steps=20, save_every=10, dropout=0.0)
    bundle = finetune(cfg, dataset=data)
    losses = [float(line.split("loss ")[1].split()[0]) for line in capsys.readouterr().out.splitlines()
              if line.startswith("step ")]
    assert len(losses) == 20 and losses[-1] < 0.7 * losses[0]

    state = load_file(str(bundle / "model.safetensors"))
    assert state["classifier.weight"].shape == (18, 32) and state["classifier.bias"].shape == (18,)
    assert all(k.startswith(("trained_model.", "classifier.")) for k in state)
    base = load_file(str(base_bundle / "model.safetensors"))
    assert all(torch.equal(base[k], state[f"trained_model.{k}"]) for k in base)  # the CLIP stayed frozen

    loaded = load_ctclip(resolve_spec(bundle), device=torch.device("cpu"))
    assert loaded.kind == "classfine" and loaded.classifier is not None
    with torch.no_grad():
        probs = loaded.classifier(data.x)
        latents, _ = loaded.clip.encode_image(data.x)
    manual = torch.sigmoid(torch.relu(latents) @ state["classifier.weight"].T + state["classifier.bias"])
    torch.testing.assert_close(probs, manual)
    assert probs.shape == (4, 18) and bool(((probs > 0) & (probs < 1)).all())
    bce = torch.nn.functional.binary_cross_entropy
    w_before = torch.zeros(18, 32)  # fresh heads start near 0.5; the trained one fits the labels better
    assert float(bce(probs, data.labels)) < float(bce(torch.sigmoid(torch.relu(latents) @ w_before.T), data.labels))

    cfg.max_steps = 22
    finetune(cfg, dataset=data)
    out = capsys.readouterr().out
    assert "latents: reusing" in out and "resumed from" in out and "step 21/22" in out


@pytest.mark.slow
def test_classfine_on_phantoms_from_a_config_runs_in_the_engine(tmp_path: Path) -> None:
    """The whole path: phantom records with labels → cached inputs → latents → head → bundle → FindingsModel."""
    from builders import tiny_bundle

    from engine.findings import FindingsModel
    from engine.io import open_volume

    torch.set_num_threads(1)
    base = tiny_bundle(tmp_path / "base")
    cfg = FinetuneConfig(mode="classfine", base=str(base), output_dir=str(tmp_path / "run"),
                         data={"kind": "phantoms", "count": 2, "shape": [24, 48, 48], "folder": str(tmp_path / "ph")},
                         cache_dir=str(tmp_path / "cache"), batch_size=2, num_workers=0, lr=1e-2, warmup_steps=1,
                         max_steps=3, save_every=3, log_every=1, name="phantom-classfine")
    bundle = finetune(cfg)
    cpu = torch.device("cpu")
    result = FindingsModel(load_ctclip(resolve_spec(bundle), device=cpu), cpu).run(
        open_volume(tmp_path / "ph" / "phantom_00000" / "phantom.nii.gz"))
    assert set(result.method.values()) == {"classfine"} and len(result.probabilities) == 18
    assert all(0 < p < 1 for p in result.probabilities.values())
