"""LoRA: our layers against PEFT on the same folders, merge equivalence, and a tiny training run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_tiny_chat_model

from sprout.config import TrainConfig
from sprout.models import build_model, load_model, model_preset, save_model
from sprout.train.lora import LoRALinear, apply_lora, load_adapter, lora_parameters, merge_lora, save_adapter


def _base(tmp_path):
    torch.manual_seed(0)
    model = build_model(model_preset("tiny"))
    save_model(model, tmp_path / "base")
    return model


def _random_adapter(model, r=4, alpha=8.0, targets=None):
    kw = {"target_modules": targets} if targets else {}
    apply_lora(model, r=r, alpha=alpha, **kw)
    g = torch.Generator().manual_seed(1)
    for _, p in lora_parameters(model):  # non-zero B so the adapter changes the output
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_wraps_every_projection_and_trains_only_adapters(tmp_path):
    model = _random_adapter(_base(tmp_path))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 2 * 7  # q k v o gate up down in both layers, square or not
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert all(p.requires_grad for _, p in lora_parameters(model))


def test_matches_peft_logits(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model = _random_adapter(_base(tmp_path)).eval()
    save_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0 and not cfg["use_dora"] and cfg["bias"] == "none"
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(ids).logits
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
        base_logits = hf(ids).logits
        pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
        theirs = pm(ids).logits
    assert (theirs - base_logits).abs().max() > 1e-2  # the adapter really does something
    assert (ours - theirs).abs().max() < 1e-4

    # ...and an adapter PEFT writes loads into our model with the same result.
    pm.save_pretrained(str(tmp_path / "peft_saved"))
    ours2 = load_adapter(load_model(tmp_path / "base"), tmp_path / "peft_saved").eval()
    with torch.no_grad():
        assert (ours2(ids).logits - theirs).abs().max() < 1e-4


def test_merge_equals_unmerged(tmp_path):
    model = _random_adapter(_base(tmp_path), targets=["q_proj", "down_proj"]).eval()
    ids = torch.randint(3, 512, (2, 10))
    with torch.no_grad():
        before = model(ids).logits
        merge_lora(model)
        after = model(ids).logits
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert (before - after).abs().max() < 1e-5
    save_model(model, tmp_path / "merged")  # a plain model folder again
    assert set(load_model(tmp_path / "merged").state_dict()) == set(build_model(model_preset("tiny")).state_dict())


def test_merge_cli_function(tmp_path):
    from sprout.export.merge_lora import merge_lora_folder

    base = _base(tmp_path)
    model = _random_adapter(load_model(tmp_path / "base")).eval()
    save_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    out = merge_lora_folder(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged")
    ids = torch.randint(3, 512, (1, 9))
    with torch.no_grad():
        assert (load_model(out)(ids).logits - model(ids).logits).abs().max() < 1e-5
        assert (base(ids).logits - model(ids).logits).abs().max() > 1e-3


def test_lora_stage_trains_and_saves_adapter(tmp_path):
    from sprout.train.engine import train

    base, _ = save_tiny_chat_model(tmp_path / "base")
    cfg = TrainConfig(
        stage="lora",
        model=str(tmp_path / "base"),
        out=str(tmp_path / "run"),
        seq_len=64,
        batch_size=4,
        max_steps=3,
        eval_every=0,
        log_every=1,
        save_every=0,
        lr=1e-2,
        objective_args={"r": 2, "alpha": 4, "dataset": "identity"},
    )
    out = train(cfg)
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    model = load_adapter(load_model(tmp_path / "base"), out).eval()
    ids = torch.randint(3, 100, (1, 8))
    with torch.no_grad():
        assert (model(ids).logits - base.eval()(ids).logits).abs().max() > 0  # B moved off zero


def test_post_training_cli_commands(tmp_path):
    from sprout.cli import build_parser, chat_tools, main

    model = _random_adapter(_base(tmp_path))
    save_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    main(
        [
            "export",
            "merge-lora",
            "--model",
            str(tmp_path / "base"),
            "--lora",
            str(tmp_path / "adapter"),
            "--out",
            str(tmp_path / "merged"),
        ]
    )
    assert (tmp_path / "merged" / "model.safetensors").exists()
    c = build_parser().parse_args(["chat", "--model", "M", "--lora", "X", "--tools"])
    assert c.lora == "X"
    assert [t["function"]["name"] for t in chat_tools(c.tools)] == ["calculator", "unit_convert", "date_calc"]
    assert chat_tools(build_parser().parse_args(["chat", "--model", "M"]).tools) is None
