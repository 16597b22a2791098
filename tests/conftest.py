import os
import signal
from collections.abc import Callable

import pytest
import torch

from sprout.models import build_model, model_preset


@pytest.fixture(autouse=True)
def _threads():
    # The CI machine has 2 cores; one thread per test keeps runs predictable.
    torch.set_num_threads(1)


def tiny_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = build_model(model_preset("tiny", **overrides)).eval()
    # Random norm weights so tests exercise them (fresh norms are all ones).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def assert_cached_decoding_matches_full_forward(model, length: int = 20, prefill: int = 12, max_len: int = 32):
    """Prefill `prefill` tokens into a fresh cache, decode the rest one token at a time, and compare
    every step's logits with one full forward pass over the whole sequence."""
    x = torch.randint(3, 512, (2, length))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2, max_len)
        steps = [model(x[:, :prefill], cache=cache).logits]
        for t in range(prefill, length):
            steps.append(model(x[:, t : t + 1], cache=cache).logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


# One tiny preset per model family the README lists: (preset, overrides).
FAMILIES = {
    "qwen3": ("tiny", {}),
    "llama": ("tiny", {"model_type": "llama"}),
    "qwen3_moe": ("tiny-moe", {}),
    "deepseek_v3": ("tiny-deepseekv3", {}),
    "qwen3_next": ("tiny-qwen3-next", {}),
}


def tiny_family_model(family: str, seed: int = 0, **overrides):
    """A tiny random model of `family` (a FAMILIES key), in eval mode, with random norm weights and (DeepSeek)
    random routing biases so tests exercise them."""
    from sprout.models.qwen3_next import ZeroCenteredRMSNorm

    preset, kw = FAMILIES[family]
    torch.manual_seed(seed)
    model = build_model(model_preset(preset, **{**kw, **overrides})).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ZeroCenteredRMSNorm):
                module.weight.uniform_(-0.5, 0.5)  # scale 1 + w
            elif type(module).__name__.endswith("RMSNorm"):
                module.weight.uniform_(0.5, 1.5)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.uniform_(-0.05, 0.05)
    return model


class _BatchedRows:
    """Drives a model's cache the way continuous batching does: rows join (each prefilled alone, then merged
    with left padding), decode together one token a step, and leave (select_rows + drop_left)."""

    def __init__(self, model):
        self.model, self.cache, self.mask = model, None, None
        self.names: list[str] = []
        self.tokens: dict[str, torch.Tensor] = {}
        self.cursor: dict[str, int] = {}
        self.logits: dict[str, list[torch.Tensor]] = {}

    def add(self, name: str, tokens: torch.Tensor, prompt_len: int) -> None:
        cache = self.model.new_cache(1, 2)  # tiny on purpose: columns must grow on demand
        self.logits[name] = [self.model(tokens[None, :prompt_len], cache=cache).logits[0, -1]]
        self.tokens[name], self.cursor[name] = tokens, prompt_len
        mask = torch.ones(1, prompt_len, dtype=torch.long)
        if self.cache is None:
            self.cache, self.mask = cache, mask
        else:
            S, L = self.cache.length, prompt_len
            if L < S:
                cache.left_pad(S - L)
                mask = torch.cat([mask.new_zeros(1, S - L), mask], 1)
            elif L > S:
                self.cache.left_pad(L - S)
                self.mask = torch.cat([self.mask.new_zeros(len(self.names), L - S), self.mask], 1)
            self.cache.concat(cache)
            self.mask = torch.cat([self.mask, mask], 0)
        self.names.append(name)

    def step(self) -> None:
        toks = torch.tensor([int(self.tokens[n][self.cursor[n]]) for n in self.names])
        pos = torch.tensor([self.cursor[n] for n in self.names])
        self.cache.reserve(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.names), 1)], 1)
        logits = self.model(
            toks[:, None], position_ids=pos[:, None], attention_mask=self.mask, cache=self.cache
        ).logits[:, -1]
        for i, n in enumerate(self.names):
            self.logits[n].append(logits[i])
            self.cursor[n] += 1

    def remove(self, name: str) -> int:
        """Drop a row, then trim the columns no remaining row uses; returns how many were trimmed."""
        keep = [i for i, n in enumerate(self.names) if n != name]
        self.cache.select_rows(torch.tensor(keep))
        self.mask, self.names = self.mask[keep], [self.names[i] for i in keep]
        lead = int(self.mask.any(0).long().argmax())
        self.cache.drop_left(lead)
        self.mask = self.mask[:, lead:]
        assert self.cache.batch_size == len(keep) and self.cache.length == self.mask.shape[1]
        return lead


def decode_alone(model, tokens: torch.Tensor, prompt_len: int, steps: int) -> list[torch.Tensor]:
    """Next-token logits after the prompt and after each of `steps` further tokens, with a fresh cache."""
    cache = model.new_cache(1, 64)
    out = [model(tokens[None, :prompt_len], cache=cache).logits[0, -1]]
    for t in range(prompt_len, prompt_len + steps):
        out.append(model(tokens[None, t : t + 1], cache=cache).logits[0, -1])
    return out


def assert_cache_operations_match_decoding_alone(model, atol: float = 1e-4) -> None:
    """Row a joins and decodes; b (a longer prompt) joins mid-decode, so a is left-padded; c (a short prompt)
    joins left-padded itself; b, then a, leave (rows removed, padding columns trimmed); the rest decode on.
    At every step each row's logits equal decoding that row alone."""
    torch.manual_seed(1)
    seqs = {
        "a": (torch.randint(3, 512, (20,)), 5),
        "b": (torch.randint(3, 512, (30,)), 13),
        "c": (torch.randint(3, 512, (20,)), 2),
    }
    rows = _BatchedRows(model)
    with torch.no_grad():
        rows.add("a", *seqs["a"])
        for _ in range(3):
            rows.step()
        rows.add("b", *seqs["b"])  # 13 > 8 columns: a is left-padded
        rows.step()
        rows.add("c", *seqs["c"])  # 2 < 14 columns: c is left-padded
        for _ in range(2):
            rows.step()
        assert rows.remove("b") > 0  # a's padding is now unused by everyone: trimmed
        rows.step()
        assert rows.remove("a") > 0  # and c's
        for _ in range(2):
            rows.step()
        for name, (tokens, prompt_len) in seqs.items():
            got = rows.logits[name]
            ref = decode_alone(model, tokens, prompt_len, len(got) - 1)
            err = (torch.stack(got) - torch.stack(ref)).abs().max()
            assert err < atol, f"row {name}: batched cache logits differ from decoding alone by {err}"


def ctrl_c_at(step: int) -> Callable[[dict], None]:
    """An engine `on_step` callback that interrupts the run like Ctrl-C (a real SIGINT) after `step`."""

    def on_step(info: dict) -> None:
        if info["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)

    return on_step


def save_tiny_chat_model(path):
    """A tiny model (seed 0) with the built-in tokenizer's vocabulary, saved together with that
    tokenizer: a model folder the post-training stages can start from. Returns (model, tokenizer)."""
    from sprout.models import save_model
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(default_tokenizer_dir())
    torch.manual_seed(0)
    model = build_model(model_preset("tiny", vocab_size=tok.vocab_size))
    save_model(model, path)
    tok.save(path)
    return model, tok


# family -> (preset, overrides) for export tests; llama is untied so a separate output head is exercised too.
TINY_FAMILIES = {
    "qwen3": ("tiny", {}),
    "llama": ("tiny", {"model_type": "llama", "tie_word_embeddings": False}),
    "qwen3_moe": ("tiny-moe", {}),
    # llama.cpp's qwen2moe mixes experts with un-renormalised weights (transformers' Qwen2-MoE default)
    "qwen2_moe": (
        "tiny-moe",
        {"model_type": "qwen2_moe", "shared_expert_intermediate_size": 32, "norm_topk_prob": False},
    ),
    "deepseek_v3": ("tiny-deepseekv3", {}),
    "qwen3_next": ("tiny-qwen3-next", {}),
}


def save_tiny_family_model(path, family: str, seed: int = 0):
    """A tiny model of `family` with the built-in tokenizer, saved to `path` (returned). Weights are scaled
    up (x3) and norms randomised so next-token distributions are peaked enough for greedy decoding in
    another engine to follow a varied path that small numeric differences cannot flip."""
    from sprout.models import save_model
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    preset, overrides = TINY_FAMILIES[family]
    tok = Tokenizer.load(default_tokenizer_dir())
    torch.manual_seed(seed)
    model = build_model(model_preset(preset, vocab_size=tok.vocab_size, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif p.ndim >= 2:
                p.mul_(3.0)
    save_model(model, path)
    tok.save(path)
    return path
