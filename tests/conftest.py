import os
import signal
from typing import Callable

import pytest
import torch

from sprout.models import model_preset
from sprout.models import build_model


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
            steps.append(model(x[:, t:t + 1], cache=cache).logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


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
