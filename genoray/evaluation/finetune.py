"""LoRA fine-tuning of a transformers DNA model: the comparison the literature uses.

``LoraClassifier(model, ...).fit(sequences, labels)`` wraps
``AutoModelForSequenceClassification`` (loaded like :class:`~genoray.encoders.hf.HFEncoder`:
hub id or local directory, ``trust_remote_code`` only when asked) in a PEFT LoRA adapter on the
attention projections and trains adapter + classification head with AdamW. It exists to be
compared with frozen embeddings + retrieval in :mod:`genoray.evaluation.study`; it is not used for
serving. Needs ``peft`` (``pip install 'genoray[finetune]'``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class LoraClassifier:
    """Scikit-learn style wrapper (``fit`` / ``predict_proba`` / ``classes_``) around LoRA."""

    def __init__(self, model: str, r: int = 8, alpha: int = 16, lr: float = 5e-4, epochs: int = 1,
                 max_steps: int | None = None, batch_size: int = 16, max_length: int = 512, seed: int = 0,
                 trust_remote_code: bool = False, target_modules: tuple[str, ...] | None = None):
        self.model, self.r, self.alpha, self.lr = model, r, alpha, lr
        self.epochs, self.max_steps, self.batch_size, self.max_length = epochs, max_steps, batch_size, max_length
        self.seed, self.trust_remote_code, self.target_modules = seed, trust_remote_code, target_modules

    def _load(self, n_labels: int):
        import torch
        from peft import LoraConfig, TaskType, get_peft_model
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        local = Path(self.model).expanduser().is_dir()
        tok = AutoTokenizer.from_pretrained(self.model, trust_remote_code=self.trust_remote_code, local_files_only=local)
        # right padding: HyenaDNA's tokenizer pads on the left, and in a causal model the pads then
        # feed every real token (its classifier already pools the last non-pad token, right-padding style)
        tok.padding_side = "right"
        base = AutoModelForSequenceClassification.from_pretrained(
            self.model, num_labels=n_labels, use_safetensors=True, trust_remote_code=self.trust_remote_code,
            local_files_only=local)
        import inspect

        targets = list(self.target_modules) if self.target_modules else _attention_modules(base)
        self.takes_mask_ = "attention_mask" in inspect.signature(base.forward).parameters  # HyenaDNA: no
        if self.takes_mask_:
            cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=self.r, lora_alpha=self.alpha, lora_dropout=0.0,
                             target_modules=targets)
        else:  # peft's SEQ_CLS wrapper always passes attention_mask=...: use the generic one
            names = {n.split(".")[-1] for n, _ in base.named_modules()}
            cfg = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=targets,
                             modules_to_save=[m for m in ("classifier", "score") if m in names])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return tok, get_peft_model(base, cfg).to(device), device

    def _encode(self, seqs: list[str]):
        enc = self.tokenizer_(seqs, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        keep = ("input_ids", "attention_mask") if self.takes_mask_ else ("input_ids",)
        return {k: enc[k].to(self.device_) for k in keep if k in enc}

    def fit(self, sequences, labels) -> "LoraClassifier":
        """Fine-tune LoRA adapters and a classification head on ``(sequences, labels)``; returns ``self``."""
        import torch

        torch.manual_seed(self.seed)
        labels = np.asarray(labels, dtype=object)
        self.classes_ = np.array(sorted(set(labels)), dtype=object)
        y = torch.tensor([list(self.classes_).index(v) for v in labels])
        self.tokenizer_, self.net_, self.device_ = self._load(len(self.classes_))
        opt = torch.optim.AdamW([p for p in self.net_.parameters() if p.requires_grad], lr=self.lr)
        rng = np.random.default_rng(self.seed)
        seqs = list(sequences)
        steps, t0 = 0, time.perf_counter()
        self.net_.train()
        for _ in range(self.epochs):
            order = rng.permutation(len(seqs))
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self._encode([seqs[i] for i in idx])
                out = self.net_(**enc, labels=y[idx].to(self.device_))
                out.loss.backward()
                opt.step()
                opt.zero_grad()
                steps += 1
                if self.max_steps and steps >= self.max_steps:
                    break
            if self.max_steps and steps >= self.max_steps:
                break
        self.steps_, self.train_seconds_ = steps, time.perf_counter() - t0
        self.trainable_params_ = sum(p.numel() for p in self.net_.parameters() if p.requires_grad)
        return self

    def predict_proba(self, sequences) -> np.ndarray:
        """Class probabilities of each sequence."""
        import torch

        self.net_.eval()
        seqs, out = list(sequences), []
        with torch.inference_mode():
            for start in range(0, len(seqs), 64):
                enc = self._encode(seqs[start : start + 64])
                out.append(torch.softmax(self.net_(**enc).logits.float(), dim=-1).cpu().numpy())
        return np.vstack(out)

    def predict(self, sequences) -> np.ndarray:
        """Most probable class of each sequence."""
        return self.classes_[np.argmax(self.predict_proba(sequences), axis=1)]


def _attention_modules(model) -> list[str]:
    """Names of the attention projections LoRA should adapt (BERT/ESM: query, value)."""
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    for pair in (("query", "value"), ("q_proj", "v_proj"), ("Wqkv",), ("in_proj",)):
        if all(p in names for p in pair):
            return list(pair)
    raise ValueError(f"cannot find attention projections to adapt; pass target_modules (modules: {sorted(names)[:20]})")
