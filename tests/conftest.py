import pytest
import torch

from sprout.config import model_preset
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
