"""A Bradley–Terry reward model: a causal LM's trunk plus a scalar head, saved as a standard
sequence-classification folder (`Qwen3ForSequenceClassification` / `LlamaForSequenceClassification`,
num_labels 1) that stock transformers loads; `RewardScorer` scores with any such folder.

The score of a sequence is the head applied to the final-norm hidden state of its last real token
(right padding), exactly what transformers' *ForSequenceClassification computes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..models.dense import SproutForCausalLM

_ARCH = {"qwen3": "Qwen3ForSequenceClassification", "llama": "LlamaForSequenceClassification"}


class RewardModel(nn.Module):
    def __init__(self, lm: SproutForCausalLM):  # of the qwen3 / llama family
        super().__init__()
        if lm.config.model_type not in _ARCH:
            raise SystemExit(f"reward models are built on qwen3 or llama models, not {lm.config.model_type!r}")
        self.config = lm.config
        self.model = lm.model  # embeddings, layers, final norm (the LM head is not a part of this module)
        # The LM's trunk code over those same layers; a bound method, not a submodule, so the saved names stay
        # `model.*` and `score.weight` (the LM object stays referenced, its head outside this module's state).
        self.trunk = lm.trunk
        self.score = nn.Linear(lm.config.hidden_size, 1, bias=False)
        nn.init.normal_(self.score.weight, std=lm.config.hidden_size**-0.5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B] scores at each row's last real token."""
        x, _ = self.trunk(input_ids)
        h = self.model.norm(x)
        last = attention_mask.sum(1) - 1
        return self.score(h[torch.arange(len(last), device=h.device), last]).squeeze(-1).float()

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        cfg = self.config.to_hf_dict()
        cfg.update(
            {
                "architectures": [_ARCH[self.config.model_type]],
                "num_labels": 1,
                "id2label": {"0": "LABEL_0"},
                "label2id": {"LABEL_0": 0},
                "tie_word_embeddings": False,
            }
        )
        (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


class RewardScorer:
    """Scores conversations with a sequence-classification folder from disk (ours or anyone's) through
    transformers; the folder's own tokenizer and chat template render the text."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", max_length: int = 1024):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (Path(folder) / "config.json").exists():
            raise SystemExit(f"reward model {folder}: not a model folder (config.json is missing)")
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
        self.model.requires_grad_(False)
        self.device, self.max_length = device, max_length
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token

    @torch.no_grad()
    def score(self, conversations: list[list[dict[str, Any]]]) -> torch.Tensor:
        texts = [self.tok.apply_chat_template(c, tokenize=False) for c in conversations]
        enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        return self.model(**enc.to(self.device)).logits[:, 0].float()
