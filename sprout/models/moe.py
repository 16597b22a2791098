"""Mixture-of-experts feed-forward and the Qwen-MoE model family (`qwen3_moe`, `qwen2_moe` layouts).

    router:  s = score(x @ W_gate^T)              softmax (Qwen) or sigmoid (DeepSeek)
    choose:  top-k experts per token               optionally only inside the best `topk_group` groups,
                                                   optionally after adding a balancing bias (not used as weight)
    mix:     y = sum_k g_k * Expert_k(x) (+ shared expert(s))

Dispatch sorts the (token, expert) assignments by expert, so each expert runs once on one
contiguous slice of tokens: a loop over experts, never over tokens.

Load balancing, either or both:
  * auxiliary loss  coef * sum_i f_i * P_i, with f_i = E/(K*N) * (#tokens routed to i) and
    P_i the mean routing probability (Switch/Qwen; DeepSeek's variant is computed per sequence);
  * auxiliary-loss-free bias (DeepSeek-V3): once per optimizer step (`update_router_biases`, called from
    Objective.on_optimizer_step with the expert load summed over the step's micro-batches and, under DDP,
    over all ranks) the per-expert bias `e_score_correction_bias` moves by `bias_update_rate` towards
    under-loaded experts. The bias only changes which experts are chosen, never the mixing weights.

A block returns (output, RoutingStats): the expert load of this pass and the weighted balance loss
(training only); the model gathers them into CausalLMOutput.expert_load / aux_losses.

Parameter names follow transformers' on-disk layout (`mlp.gate.weight`, `mlp.experts.N.gate_proj.weight`,
`mlp.shared_expert(s)...`), so a saved folder loads in `Qwen3MoeForCausalLM` / `DeepseekV3ForCausalLM` /
`Qwen3NextForCausalLM`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, base_hf_dict, config_kwargs_from_hf
from .dense import SproutForCausalLM
from .layers import RoutingStats, SwiGLU


class Router(nn.Module):
    """Scores experts for each token and picks the top-k. Named `gate` inside the MoE block."""

    def __init__(
        self,
        hidden: int,
        num_experts: int,
        top_k: int,
        score: str = "softmax",
        norm_topk: bool = True,
        n_group: int = 1,
        topk_group: int = 1,
        routed_scaling_factor: float = 1.0,
        use_bias: bool = False,
    ):
        super().__init__()
        if score not in ("softmax", "sigmoid"):
            raise ValueError(f"router score must be softmax or sigmoid, got {score!r}")
        if num_experts % n_group:
            raise ValueError("num_experts must be a multiple of n_group")
        self.num_experts, self.top_k, self.score = num_experts, top_k, score
        self.norm_topk, self.n_group, self.topk_group = norm_topk, n_group, topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(num_experts, hidden).normal_(std=0.02))
        # DeepSeek-V3's balancing bias: a buffer (not trained by gradients), saved with the weights.
        if use_bias:
            self.register_buffer("e_score_correction_bias", torch.zeros(num_experts))
        else:
            self.e_score_correction_bias = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, H] -> (scores [N, E] fp32, top-k weights [N, K], top-k expert ids [N, K])."""
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.softmax(-1) if self.score == "softmax" else logits.sigmoid()
        choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias
        if self.n_group > 1 and self.topk_group < self.n_group:
            # Group-limited routing: rank groups by the sum of their two best experts, keep topk_group groups.
            N, E = choice.shape
            grouped = choice.view(N, self.n_group, E // self.n_group)
            group_score = grouped.topk(min(2, E // self.n_group), dim=-1).values.sum(-1)
            keep = torch.zeros_like(group_score, dtype=torch.bool)
            keep.scatter_(1, group_score.topk(self.topk_group, dim=-1).indices, True)
            choice = choice.masked_fill(~keep.repeat_interleave(E // self.n_group, dim=1), float("-inf"))
        idx = choice.topk(self.top_k, dim=-1).indices
        w = scores.gather(1, idx)
        if self.norm_topk:
            w = w / (w.sum(-1, keepdim=True) + (1e-20 if self.score == "sigmoid" else 0.0))
        w = w * self.routed_scaling_factor
        return scores, w.to(x.dtype), idx


def dispatch_sorted(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, experts: nn.ModuleList) -> torch.Tensor:
    """y[n] = sum_k w[n, k] * experts[idx[n, k]](x[n]), computed by sorting assignments by expert.

    x [N, H], idx/w [N, K]. Each expert sees one contiguous block of the sorted tokens."""
    N, K = idx.shape
    flat = idx.reshape(-1)
    order = flat.argsort(stable=True)
    token = order // K  # which token each sorted assignment belongs to
    counts = torch.bincount(flat, minlength=len(experts)).tolist()
    xs = x[token]
    outs, start = [], 0
    for e, c in enumerate(counts):
        if c:
            outs.append(experts[e](xs[start : start + c]))
        start += c
    ys = torch.cat(outs, 0) * w.reshape(-1)[order, None]
    return torch.zeros_like(x).index_add_(0, token, ys.to(x.dtype))


def dispatch_naive(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, experts: nn.ModuleList) -> torch.Tensor:
    """Reference: one token at a time (tests only)."""
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for k in range(idx.shape[1]):
            out[n] += w[n, k] * experts[int(idx[n, k])](x[n : n + 1])[0]
    return out


class MoEBlock(nn.Module):
    """Routed experts + optional shared experts; returns (output, RoutingStats)."""

    def __init__(
        self,
        hidden: int,
        num_experts: int,
        top_k: int,
        expert_intermediate: int,
        *,
        score: str = "softmax",
        norm_topk: bool = True,
        n_group: int = 1,
        topk_group: int = 1,
        routed_scaling_factor: float = 1.0,
        aux_loss_coef: float = 0.0,
        seq_aux: bool = False,
        bias_update_rate: float = 0.0,
        use_bias: bool = False,
        shared_intermediate: int = 0,
        shared_gated: bool = False,
    ):
        super().__init__()
        self.gate = Router(
            hidden,
            num_experts,
            top_k,
            score,
            norm_topk,
            n_group,
            topk_group,
            routed_scaling_factor,
            use_bias or bias_update_rate > 0,
        )
        self.experts = nn.ModuleList(SwiGLU(hidden, expert_intermediate) for _ in range(num_experts))
        # Qwen keeps one shared expert scaled by a sigmoid gate; DeepSeek adds its shared experts as is.
        if shared_intermediate and shared_gated:
            self.shared_expert = SwiGLU(hidden, shared_intermediate)
            self.shared_expert_gate = nn.Linear(hidden, 1, bias=False)
        elif shared_intermediate:
            self.shared_experts = SwiGLU(hidden, shared_intermediate)
        self.shared_intermediate, self.shared_gated = shared_intermediate, shared_gated
        self.aux_loss_coef, self.seq_aux, self.bias_update_rate = aux_loss_coef, seq_aux, bias_update_rate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        B, T, H = x.shape
        flat = x.reshape(-1, H)
        scores, w, idx = self.gate(flat)
        y = dispatch_sorted(flat, idx, w, self.experts)
        if self.shared_intermediate and self.shared_gated:
            y = y + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        elif self.shared_intermediate:
            y = y + self.shared_experts(flat)
        load = torch.bincount(idx.reshape(-1).detach(), minlength=self.gate.num_experts).float()
        balance = None
        if self.training and torch.is_grad_enabled() and self.aux_loss_coef > 0:
            balance = self.aux_loss_coef * self._balance_loss(scores, idx, B, T)
        return y.view(B, T, H), RoutingStats(load=load, balance_loss=balance)

    def _balance_loss(self, scores: torch.Tensor, idx: torch.Tensor, B: int, T: int) -> torch.Tensor:
        E, K = self.gate.num_experts, self.gate.top_k
        if self.gate.score == "sigmoid":
            scores = scores / scores.sum(-1, keepdim=True)  # DeepSeek normalises sigmoid scores for the loss
        onehot = F.one_hot(idx, E).sum(1).float()  # [N, E]: 1 where the expert was chosen
        if self.seq_aux:  # per sequence, then averaged (DeepSeek-V3's complementary sequence-wise loss)
            f = onehot.view(B, T, E).mean(1) * (E / K)
            p = scores.view(B, T, E).mean(1)
            return (f * p).sum(-1).mean()
        f = onehot.mean(0) * (E / K)
        return (f * scores.mean(0)).sum()


def moe_metrics(expert_load: dict[int, torch.Tensor]) -> dict[str, float]:
    """Per-layer expert load (CausalLMOutput.expert_load, or its sum over micro-batches): max/min ratio (1 =
    perfectly even) and the load histogram (fraction of routed assignments per expert), named moe/L{layer}/...;
    plus the mean ratio over layers. Empty for dense models."""
    out: dict[str, float] = {}
    ratios = []
    for i, load in sorted(expert_load.items()):
        ratio = float(load.max() / load.min().clamp(min=1.0))
        ratios.append(ratio)
        out[f"moe/L{i}/max_min"] = ratio
        frac = (load / load.sum().clamp(min=1.0)).tolist()
        for e, v in enumerate(frac):
            out[f"moe/L{i}/e{e}"] = v
    if ratios:
        out["moe/max_min"] = sum(ratios) / len(ratios)
    return out


@torch.no_grad()
def update_router_biases(model: nn.Module, expert_load: dict[int, torch.Tensor]) -> None:
    """Auxiliary-loss-free balancing (DeepSeek-V3), once per optimizer step:
        b_i += rate * sign(mean_j load_j - load_i)
    with `expert_load` the tokens routed per expert over the whole step (all micro-batches). Under DDP the
    loads are summed over ranks first, so every rank applies the same update and the biases stay identical
    (they are buffers, which DDP does not broadcast here). A no-op for models without bias balancing."""
    layers = cast(nn.ModuleList, model.get_submodule("model.layers"))
    blocks = {
        i: layer.mlp
        for i, layer in enumerate(layers)
        if isinstance(layer.mlp, MoEBlock) and layer.mlp.bias_update_rate > 0
    }
    if not blocks:
        return
    biases = {i: cast(torch.Tensor, block.gate.e_score_correction_bias) for i, block in blocks.items()}
    # Every rank reduces the same tensor (zeros for a layer it saw no tokens for), so the collective matches.
    load = torch.stack([expert_load[i].to(b) if i in expert_load else torch.zeros_like(b) for i, b in biases.items()])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(load)
    for row, bias, block in zip(load, biases.values(), blocks.values()):
        bias += block.bias_update_rate * torch.sign(row.mean() - row)


# ---- config + model: qwen3_moe / qwen2_moe -------------------------------------------------------


@dataclass
class MoEConfig(ModelConfig):
    """Qwen-style MoE decoder. `qwen3_moe`: QK-norm, routed experts only. `qwen2_moe`: no QK-norm, plus one
    shared expert scaled by a sigmoid gate (`shared_expert_intermediate_size` > 0)."""

    model_type: str = "qwen3_moe"
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 256
    shared_expert_intermediate_size: int = 0  # qwen2_moe only
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.01
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.head_dim:  # unset: derived, as in ModelConfig
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.model_type not in ("qwen3_moe", "qwen2_moe"):
            raise ValueError(f"MoEConfig.model_type must be qwen3_moe or qwen2_moe, got {self.model_type!r}")
        if self.model_type == "qwen3_moe" and self.shared_expert_intermediate_size:
            raise ValueError("qwen3_moe has no shared expert; use model_type='qwen2_moe' for one")
        if self.model_type == "qwen2_moe" and self.head_dim != self.hidden_size // self.num_attention_heads:
            raise ValueError("qwen2_moe derives head_dim = hidden_size // num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "qwen3_moe"

    def is_sparse(self, i: int) -> bool:
        return i not in self.mlp_only_layers and (i + 1) % self.decoder_sparse_step == 0

    def to_hf_dict(self) -> dict[str, Any]:
        arch = {"qwen3_moe": "Qwen3MoeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}[self.model_type]
        d = base_hf_dict(self, arch)
        d.update(
            head_dim=self.head_dim,
            attention_bias=False,
            num_experts=self.num_experts,
            num_experts_per_tok=self.num_experts_per_tok,
            moe_intermediate_size=self.moe_intermediate_size,
            norm_topk_prob=self.norm_topk_prob,
            router_aux_loss_coef=self.router_aux_loss_coef,
            decoder_sparse_step=self.decoder_sparse_step,
            mlp_only_layers=list(self.mlp_only_layers),
            use_sliding_window=False,
            sliding_window=None,
            output_router_logits=False,
        )
        if self.model_type == "qwen2_moe":
            d.update(shared_expert_intermediate_size=self.shared_expert_intermediate_size, qkv_bias=False)
            d.pop("head_dim")
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> MoEConfig:
        kw = config_kwargs_from_hf(cls, d)
        if "num_local_experts" in d:
            kw.setdefault("num_experts", d["num_local_experts"])
        if d.get("model_type") == "qwen2_moe" and d.get("qkv_bias", True):
            raise ValueError("sprout's qwen2_moe needs qkv_bias=false")
        return cls(**kw)

    def num_parameters(self, active: bool = False) -> int:
        h, hd = self.hidden_size, self.head_dim
        attn = h * hd * (self.num_attention_heads * 2 + self.num_key_value_heads * 2)
        norms = 2 * h + (2 * hd if self.qk_norm else 0)
        total = self.vocab_size * h * (1 if self.tie_word_embeddings else 2) + h
        for i in range(self.num_hidden_layers):
            if self.is_sparse(i):
                n = self.num_experts_per_tok if active else self.num_experts
                ffn = n * 3 * h * self.moe_intermediate_size + self.num_experts * h
                if self.shared_expert_intermediate_size:
                    ffn += 3 * h * self.shared_expert_intermediate_size + h
            else:
                ffn = 3 * h * self.intermediate_size
            total += attn + norms + ffn
        return total


class QwenMoEFields(Protocol):
    """The config fields a Qwen MoE layer reads (MoEConfig and Qwen3NextConfig both have them)."""

    hidden_size: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    norm_topk_prob: bool
    router_aux_loss_coef: float
    shared_expert_intermediate_size: int


def qwen_moe_block(cfg: QwenMoEFields) -> MoEBlock:
    """The Qwen MoE feed-forward (softmax router, optional sigmoid-gated shared expert) from a config's fields;
    shared by qwen3_moe / qwen2_moe and Qwen3-Next's sparse layers."""
    return MoEBlock(
        cfg.hidden_size,
        cfg.num_experts,
        cfg.num_experts_per_tok,
        cfg.moe_intermediate_size,
        score="softmax",
        norm_topk=cfg.norm_topk_prob,
        aux_loss_coef=cfg.router_aux_loss_coef,
        shared_intermediate=cfg.shared_expert_intermediate_size,
        shared_gated=True,
    )


class MoEForCausalLM(SproutForCausalLM):
    """The dense decoder with MoE feed-forward layers (layout `qwen3_moe` or `qwen2_moe`)."""

    config: MoEConfig

    def make_layer(self, cfg: ModelConfig, layer_idx: int) -> nn.Module:
        from .dense import DecoderLayer

        assert isinstance(cfg, MoEConfig)  # the family's own config, as __init__ receives it
        ffn = None
        if cfg.is_sparse(layer_idx):
            ffn = qwen_moe_block(cfg)
        return DecoderLayer(cfg, layer_idx, ffn=ffn, norm=self.norm_cls)
