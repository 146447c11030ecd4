"""The CT-CHAT model as it trains: a causal LM (optionally with peft LoRA) + the engine's projector, one module.

The forward pass is upstream's `prepare_inputs_labels_for_multimodal` (the projected image rows replace the image
marker; labels there are ignored) followed by a causal-LM loss computed only at target positions (the vocabulary
projection of every prompt token is wasted work). A constant prompt prefix — the system text before the image,
identical in every sample — can be run once and its keys/values reused (`PrefixKV`): exact while the LLM is frozen
(stage 1), an approximation refreshed every few steps while LoRA trains (gradients then do not reach the prefix's
positions). It is what makes CPU training affordable; GPU configs leave it off.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.chat.prompts import TASK_TOKENS
from engine.models.projector import CTChatProjector
from training.data_chat import IGNORE_INDEX, IMAGE_INDEX

PAD_TOKEN = "<pad>"
PROJECTOR_KEY = "mm_projector"


def add_ctchat_tokens(model: Any, tokenizer: Any) -> list[str]:
    """Upstream's vocabulary growth: "<pad>" as the pad token, then the 4 task tokens (misspelt `<short_answe>`
    included) as special tokens. New embedding rows = mean of the existing rows — upstream's smart resize, and what
    engine.chat.lora assumes when a LoRA folder carries no rows — so the converter rebuilds them exactly."""
    base_vocab = int(model.get_input_embeddings().weight.shape[0])
    added = add_ctchat_tokens_to_tokenizer(tokenizer)
    n_vocab = len(tokenizer)
    if n_vocab > base_vocab:
        model.resize_token_embeddings(n_vocab, mean_resizing=False)
        weights = [model.get_input_embeddings().weight]
        out = model.get_output_embeddings()
        if out is not None and out.weight is not weights[0]:
            weights.append(out.weight)
        with torch.no_grad(), _gathered(weights):
            for w in weights:
                w[base_vocab:] = w[:base_vocab].float().mean(0).to(w.dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return added


def _gathered(params: list[torch.nn.Parameter]) -> Any:
    """Full tensors to edit in place: DeepSpeed ZeRO-3 shards them (written back from rank 0), else a no-op."""
    if any(hasattr(p, "ds_id") for p in params):
        from deepspeed import zero

        return zero.GatheredParameters(params, modifier_rank=0)
    return contextlib.nullcontext()


def add_ctchat_tokens_to_tokenizer(tokenizer: Any) -> list[str]:
    """The tokenizer half of `add_ctchat_tokens` (also used to rebuild a LoRA folder's tokenizer from its base)."""
    vocab = tokenizer.get_vocab()
    added: list[str] = []
    if PAD_TOKEN not in vocab:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        added.append(PAD_TOKEN)
    else:
        tokenizer.pad_token = PAD_TOKEN
    new = [t for t in TASK_TOKENS if t not in vocab]
    tokenizer.add_tokens(new, special_tokens=True)
    return added + new


def linear_module_names(model: nn.Module) -> list[str]:
    """Upstream's find_all_linear_names: the last name part of every nn.Linear except lm_head."""
    names = {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    names.discard("lm_head")
    return sorted(names)


def apply_lora(model: Any, *, r: int, alpha: int, dropout: float) -> Any:
    """peft LoRA on every Linear layer but lm_head (bias none), as upstream's stage 2."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=linear_module_names(model), task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5: not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def causal_lm(llm: Any) -> Any:
    """The *ForCausalLM under a peft wrapper (LoRA layers stay injected), or `llm` itself."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


class PrefixKV:
    """Keys/values of a constant prompt prefix, computed without gradients and expanded to each batch."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = list(ids)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.steps_since_refresh = 0

    def __len__(self) -> int:
        return len(self.ids)

    @torch.no_grad()
    def refresh(self, llm: Any, device: torch.device) -> None:
        lm = causal_lm(llm)
        was_training = lm.training
        lm.eval()  # no LoRA dropout: the prefix is what inference computes
        try:
            out = lm.model(input_ids=torch.tensor([self.ids], device=device), use_cache=True)
        finally:
            lm.train(was_training)
        cache = out.past_key_values
        self.layers = [(layer.keys.detach(), layer.values.detach()) for layer in cache.layers]
        self.steps_since_refresh = 0

    def expanded(self, batch: int) -> Any:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.layers):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
        return cache


class CTChatForTraining(nn.Module):
    """`llm` (a causal LM, maybe peft-wrapped) + `mm_projector`; forward returns the mean loss over target tokens."""

    def __init__(self, llm: Any, mm_projector: CTChatProjector) -> None:
        super().__init__()
        self.llm = llm
        self.mm_projector = mm_projector

    def multimodal_inputs(self, ids: torch.Tensor, labels: torch.Tensor,
                          images: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L') input embeddings and labels with each row's image marker replaced by its projected rows."""
        embed = causal_lm(self.llm).get_input_embeddings()
        text = embed(ids.clamp(min=0))  # (B, L, H); marker rows are replaced below
        rows_per_sample: list[torch.Tensor] = []
        labels_per_sample: list[torch.Tensor] = []
        projected = None
        if images is not None:
            projected = self.mm_projector(images.to(text.device)).to(text.dtype)  # (B, Q, H)
        for b in range(ids.shape[0]):
            where = (ids[b] == IMAGE_INDEX).nonzero().flatten()
            if len(where) == 0:
                rows_per_sample.append(text[b])
                labels_per_sample.append(labels[b])
                continue
            if projected is None:
                raise ValueError("A sample has an image marker but the batch carries no image tokens")
            p = int(where[0])
            image = projected[b]
            rows_per_sample.append(torch.cat([text[b, :p], image, text[b, p + 1:]]))
            labels_per_sample.append(torch.cat([labels[b, :p], labels.new_full((image.shape[0],), IGNORE_INDEX),
                                                labels[b, p + 1:]]))
        width = max(r.shape[0] for r in rows_per_sample)
        rows = text.new_zeros(len(rows_per_sample), width, text.shape[-1])
        out_labels = labels.new_full((len(rows_per_sample), width), IGNORE_INDEX)
        for b, (r, lab) in enumerate(zip(rows_per_sample, labels_per_sample, strict=True)):
            rows[b, :r.shape[0]] = r
            out_labels[b, :lab.shape[0]] = lab
        return rows, out_labels

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, images: torch.Tensor | None = None,
                prefix: PrefixKV | None = None) -> torch.Tensor:
        """Right-padded rows need no attention mask: causal attention keeps real tokens from seeing the padding."""
        embeds, labels = self.multimodal_inputs(ids, labels, images)
        lm = causal_lm(self.llm)
        start = len(prefix) if prefix is not None else 0
        positions = torch.arange(start, start + embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
        kwargs: dict[str, Any] = {"inputs_embeds": embeds, "position_ids": positions}
        if prefix is not None and len(prefix):
            kwargs.update(past_key_values=prefix.expanded(embeds.shape[0]), use_cache=True)
        else:
            kwargs["use_cache"] = False
        hidden = lm.model(**kwargs).last_hidden_state  # (B, L', H)
        targets = labels[:, 1:]
        chosen = targets != IGNORE_INDEX
        if not bool(chosen.any()):
            return hidden.sum() * 0.0  # nothing to learn in this batch (e.g. replies cut by max_length)
        logits = lm.lm_head(hidden[:, :-1][chosen])  # (N_targets, V): only where a token is predicted
        return F.cross_entropy(logits.float(), targets[chosen])
