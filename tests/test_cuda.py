"""The CUDA paths (run with `pytest -m cuda` on a machine with an NVIDIA GPU; benchmarks/gpu.sh does).

Never run in CI: it has no GPU. Each test compares the GPU path against the CPU reference."""

import pytest
import torch
from conftest import tiny_model

from sprout.infer.generate import SamplingConfig, generate

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [40, 41, 42, 43]]
GREEDY = SamplingConfig(max_new_tokens=16, temperature=0, stop_token_ids=[])


def test_fp32_decoding_on_the_gpu_gives_the_cpu_tokens():
    model = tiny_model()
    cpu = generate(model, PROMPTS, GREEDY)
    assert generate(model.cuda(), PROMPTS, GREEDY) == cpu


def test_compiled_step_with_cuda_graphs_gives_the_eager_tokens():
    model = tiny_model().cuda()
    eager = generate(model, PROMPTS, GREEDY)
    assert generate(model, PROMPTS, GREEDY, compile_step=True) == eager
    assert generate(model, PROMPTS[:1], GREEDY, compile_step=True) == eager[:1]  # reuse at another batch size


def test_bf16_logits_stay_close_to_fp32():
    model = tiny_model().cuda()
    ids = torch.tensor(PROMPTS[:1], device="cuda")
    ref = model(ids).logits.float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = model(ids).logits.float()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_bf16_training_step_on_the_gpu_lowers_the_loss():
    model = tiny_model().cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    x = torch.randint(0, model.config.vocab_size, (4, 33), device="cuda")
    losses = []
    for _ in range(10):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
