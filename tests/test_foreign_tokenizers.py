"""Every stage on model folders written by stock transformers with tokenizers that are not sprout's.

The folders (tests/foreign_folders.py): a Qwen-style ChatML tokenizer with its special tokens after the
learned vocabulary, a Llama-3-style one (<|begin_of_text|>, headers, <|eot_id|>, no pad), and a
MiniMind-style 6,400-token one with its own template. Each is checked against the program that owns
the format: transformers renders the same prompt and decodes the same greedy tokens, the `openai`
client gets the same answer from `sprout serve`, PEFT loads the LoRA adapter with equal logits.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch
from foreign_folders import make_folder

from sprout.config import TrainConfig
from sprout.infer.chat import ChatSession
from sprout.infer.generate import SamplingConfig
from sprout.infer.loading import load_for_inference
from sprout.models import load_model
from sprout.tokenizer import Tokenizer
from sprout.train.engine import train

LAYOUTS = ("chatml", "llama3", "minimind")
CONV = [
    {"role": "user", "content": "你好, what is insurance?"},
    {"role": "assistant", "content": "A promise to pay."},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You are welcome."},
]


@pytest.fixture(scope="module", params=LAYOUTS)
def folder(request, tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp(request.param) / "model", request.param)


def _sft_file(path, n=24):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            conv = [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
            f.write(json.dumps({"conversations": conv}, ensure_ascii=False) + "\n")
    return path


def test_template_ids_and_mask_follow_the_folder(folder):
    from transformers import AutoTokenizer

    tok, hf = Tokenizer.load(folder), AutoTokenizer.from_pretrained(folder)
    end = "<|eot_id|>" if hf.bos_token == "<|begin_of_text|>" else "<|im_end|>"
    assert tok.eos_id == hf.convert_tokens_to_ids(end) and tok.eos_id in tok.stop_ids
    assert tok.pad_id == (hf.pad_token_id if hf.pad_token else hf.convert_tokens_to_ids("<|end_of_text|>"))
    for gen in (True, False):
        ours = tok.encode(tok.apply_chat_template(CONV[: 3 if gen else 4], add_generation_prompt=gen))
        theirs = hf.apply_chat_template(
            CONV[: 3 if gen else 4], add_generation_prompt=gen, tokenize=True, return_dict=False
        )
        assert ours == list(theirs)
    ids, mask = tok.encode_chat(CONV)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == f"A promise to pay.{end}You are welcome.{end}"


def test_chat_turn_equals_transformers_greedy(folder):
    from transformers import AutoModelForCausalLM

    model, tok = load_for_inference(str(folder), "cpu")
    session = ChatSession(model, tok, SamplingConfig(max_new_tokens=10, temperature=0))
    prompt = session.prompt_ids("Hello")
    reply = "".join(session.reply_stream("Hello"))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = hf.generate(
        torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=tok.stop_ids, pad_token_id=tok.pad_id
    )[0, len(prompt) :].tolist()
    out = out[: next((i for i, t in enumerate(out) if t in tok.stop_ids), len(out))]
    assert reply and reply == tok.decode(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_answer_through_openai_client(folder):
    openai = pytest.importorskip("openai")
    import uvicorn

    from sprout.infer.server import ModelRegistry, ServeSettings, create_app

    model, tok = load_for_inference(str(folder), "cpu")
    settings = ServeSettings(
        api_key="k", max_tokens_cap=16, default_max_tokens=8, max_concurrent=2, max_batch=2, request_timeout=30
    )
    registry = ModelRegistry(settings)
    registry.add("m", model, tok)
    port = _free_port()
    srv = uvicorn.Server(
        uvicorn.Config(create_app(registry, settings), host="127.0.0.1", port=port, log_level="warning")
    )
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    try:
        for _ in range(300):
            if srv.started:
                break
            time.sleep(0.02)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=30)
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
        )
    finally:
        srv.should_exit = True
        th.join(timeout=10)
    session = ChatSession(model, tok, SamplingConfig(max_new_tokens=8, temperature=0))
    assert r.usage.prompt_tokens == len(session.prompt_ids("Hello"))
    assert r.choices[0].message.content == "".join(session.reply_stream("Hello")).strip()


def test_lora_adapter_loads_in_peft_with_equal_logits(folder, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from sprout.train.lora import load_adapter

    cfg = TrainConfig(
        stage="lora",
        model=str(folder),
        data=str(_sft_file(tmp_path / "sft.jsonl")),
        out=str(tmp_path / "run"),
        seq_len=64,
        batch_size=4,
        max_steps=3,
        eval_every=0,
        log_every=1,
        save_every=0,
        lr=5e-2,
        objective_args={"r": 2, "alpha": 4},
    )
    out = train(cfg)
    ids = torch.tensor([Tokenizer.load(folder).encode("What is 3 plus 3?")])
    with torch.no_grad():
        ours = load_adapter(load_model(folder), out).eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        plain = base(ids).logits
        theirs = peft.PeftModel.from_pretrained(base, str(out)).eval()(ids).logits
    assert (theirs - plain).abs().max() > 1e-4  # the adapter trained
    assert (ours - theirs).abs().max() < 1e-4
    # export: the merged folder is a plain transformers model with the folder's own tokenizer
    from transformers import AutoTokenizer

    from sprout.export.merge_lora import merge_lora_folder

    merged = merge_lora_folder(folder, out, tmp_path / "merged")
    with torch.no_grad():
        folded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()(ids).logits
    assert (folded - theirs).abs().max() < 1e-4
    assert AutoTokenizer.from_pretrained(merged).chat_template == AutoTokenizer.from_pretrained(folder).chat_template


def test_sft_continues_and_keeps_the_folders_tokenizer(folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = TrainConfig(
        stage="sft",
        model=str(folder),
        data=str(_sft_file(tmp_path / "sft.jsonl")),
        out=str(tmp_path / "run"),
        seq_len=64,
        batch_size=4,
        max_steps=2,
        eval_every=0,
        log_every=1,
        save_every=0,
        lr=1e-3,
        val_fraction=0,
    )
    out = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r][-1] == 2 and not any(r.get("split") == "val" for r in rows)
    theirs, ours = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(folder)
    assert theirs.chat_template == ours.chat_template and theirs.get_vocab() == ours.get_vocab()
    AutoModelForCausalLM.from_pretrained(out)  # stock transformers reads the trained folder
    # transformers' generate() stops where sprout does: the turn end and the document end, nothing else
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == Tokenizer.load(folder).stop_ids
    assert set(theirs.convert_ids_to_tokens(gen["eos_token_id"])) <= {
        "<|im_end|>",
        "<|eot_id|>",
        "<|endoftext|>",
        "<|end_of_text|>",
    }


def test_pretrain_continues_with_the_folders_document_separator(folder, tmp_path):
    from sprout.data.builtin import pretrain_texts

    with open(tmp_path / "text.jsonl", "w", encoding="utf-8") as f:
        for t in pretrain_texts(max_chars=20_000):
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    cfg = TrainConfig(
        stage="pretrain",
        model=str(folder),
        data=str(tmp_path / "text.jsonl"),
        out=str(tmp_path / "run"),
        seq_len=64,
        batch_size=4,
        max_steps=2,
        eval_every=0,
        log_every=1,
        save_every=0,
        lr=1e-3,
    )
    out = train(cfg)
    meta = json.loads((out / "tokenized" / "pretrain" / "meta.json").read_text())
    assert meta["separator_id"] == Tokenizer.load(folder).doc_sep_id  # <|endoftext|> / <|end_of_text|>, by name
    with torch.no_grad():  # the weights moved from the folder's
        ids = torch.tensor([[5, 6, 7]])
        assert (load_model(out)(ids).logits - load_model(folder)(ids).logits).abs().max() > 0


def test_distill_from_the_folder_into_a_copy(folder, tmp_path):
    cfg = TrainConfig(
        stage="distill",
        model=str(folder),
        data=str(_sft_file(tmp_path / "sft.jsonl")),
        out=str(tmp_path / "run"),
        seq_len=64,
        batch_size=4,
        max_steps=1,
        eval_every=0,
        log_every=1,
        save_every=0,
        lr=1e-3,
        val_fraction=0,
        objective_args={"teacher": str(folder)},
    )
    out = train(cfg)
    first = next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    assert first["kd"] == pytest.approx(0.0, abs=1e-5)  # student = teacher at step 1: zero divergence


def test_dpo_step(folder, tmp_path):
    from sprout.data.builtin_sets import dpo_pairs

    with open(tmp_path / "dpo.jsonl", "w", encoding="utf-8") as f:
        for r in dpo_pairs("train", limit=8, max_chars=60):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    cfg = TrainConfig(
        stage="dpo",
        model=str(folder),
        data=str(tmp_path / "dpo.jsonl"),
        out=str(tmp_path / "run"),
        seq_len=48,
        batch_size=4,
        max_steps=1,
        eval_every=0,
        log_every=1,
        save_every=0,
        lr=1e-3,
    )
    out = train(cfg)
    first = next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "margin" in line)
    assert abs(first["margin"]) < 1e-4 and first["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference


def test_sprout_eval(folder, tmp_path):
    from sprout.cli import main

    data = _sft_file(tmp_path / "held.jsonl", n=4)
    main(
        [
            "eval",
            "--model",
            str(folder),
            "--out",
            str(tmp_path / "eval"),
            "--data",
            str(data),
            "--tasks",
            "insuranceqa-en",
            "--limit",
            "4",
            "--device",
            "cpu",
        ]
    )
    res = json.loads((tmp_path / "eval" / "eval.json").read_text())
    text = res["text"]
    assert text["tokens"] > 0 and 0 < text["loss"] < 20 and text["bits_per_byte"] > 0
    assert {r["method"] for r in res["choice"]} == {"mean", "pmi", "shortest", "overlap"}


def test_reasoning_stage_refuses_a_tokenizer_without_think(tmp_path):
    folder = make_folder(tmp_path / "mm", "minimind")
    cfg = TrainConfig(
        stage="reasoning",
        model=str(folder),
        out=str(tmp_path / "run"),
        seq_len=64,
        batch_size=2,
        max_steps=1,
        eval_every=0,
        save_every=0,
    )
    with pytest.raises(SystemExit, match="<think>"):
        train(cfg)


# A Qwen3-like template of our own: it drops the reasoning of turns before the last user message and its
# generation prompt pre-fills "<think>\n", so neither prefix of the training text is a plain rendering.
REWRITING_TEMPLATE = (
    "{%- set ns = namespace(last=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}{%- if m.role == 'assistant' -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if loop.index0 > ns.last and m.reasoning_content -%}"
    "{{- '<think>\\n' + m.reasoning_content + '\\n</think>\\n\\n' -}}{%- endif -%}{{- m.content + '<|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>\\n' -}}{%- endif -%}"
)


def test_mask_when_the_template_rewrites_history_and_prefills():
    from foreign_folders import build_tokenizer

    hf = build_tokenizer("chatml")
    tok = Tokenizer(
        hf.backend_tokenizer,
        {"chat_template": REWRITING_TEMPLATE, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    )
    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "reasoning_content": "greet"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4.", "reasoning_content": "add"},
    ]
    ids, mask = tok.encode_chat(conv)
    assert tok.decode(ids) == hf.apply_chat_template(conv, chat_template=REWRITING_TEMPLATE, tokenize=False)
    assert "greet" not in tok.decode(ids)  # the first turn's reasoning is gone from the training text
    # the first answer as it stands in the text; the second from after the pre-filled "<think>\n"
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Hello.<|im_end|>add\n</think>\n\n4.<|im_end|>"
