"""GGUF export, checked by the programs that read GGUF: the `gguf` reader, transformers' GGUF loader,
and llama.cpp itself (the prebuilt CPU build in `xllamacpp`, through its native server on 127.0.0.1)."""

import json
import urllib.request
from contextlib import contextmanager

import gguf
import numpy as np
import pytest
import torch
import xllamacpp
from conftest import TINY_FAMILIES
from conftest import save_tiny_family_model as make_folder

from sprout.export.gguf_export import export_gguf, write_gguf
from sprout.export.gguf_tensors import gguf_tensors
from sprout.models import load_model
from sprout.tokenizer import SPLIT_PATTERN, Tokenizer, default_tokenizer_dir

FAMILIES = list(TINY_FAMILIES)
PROMPT = [5, 100, 200, 300, 400, 500]
# Plain greedy decoding. The file's own sampling defaults (general.sampling.*, from generation_config.json:
# repetition penalty 1.05) would otherwise apply, and llama.cpp would not repeat a token sprout repeats.
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0, "cache_prompt": False, "return_tokens": True}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family -> (folder, f32 GGUF file)."""
    out = {}
    for family in FAMILIES:
        root = tmp_path_factory.mktemp(family)
        folder = make_folder(root / "model", family)
        out[family] = (folder, write_gguf(folder, root / "model-f32.gguf", "f32"))
    return out


@contextmanager
def llama_cpp(path):
    """llama.cpp's server on a GGUF file; yields a function POSTing JSON to one of its endpoints."""
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = 256
    params.n_parallel = 1
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.warmup = False
    server = xllamacpp.Server(params)
    url = server.listening_address

    def post(endpoint: str, body: dict) -> dict:
        req = urllib.request.Request(
            url + endpoint, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    try:
        yield post
    finally:
        del server


def llamacpp_logprobs(post, prompt: list[int], n_probs: int = 5) -> list[dict]:
    """llama.cpp's top next-token log-probabilities after `prompt`, as [{"id", "logprob"}, ...].

    One request per prefix: llama.cpp reports probabilities per complete UTF-8 piece of text, so in a
    longer generation a token that is half a character shares its entry with the next one; alone, such
    a token gets no entry, and this returns []."""
    r = post("/completion", {"prompt": prompt, "n_predict": 1, "n_probs": n_probs, **GREEDY})
    return r["completion_probabilities"][0]["top_logprobs"] if r.get("completion_probabilities") else []


def assert_logprobs_match(tops: list[list[dict]], logprobs: list[torch.Tensor], atol: float = 2e-3) -> None:
    """Each of llama.cpp's top log-probabilities equals sprout's for the same token (where llama.cpp gives them)."""
    assert any(tops)
    for step, lp in zip(tops, logprobs):
        for top in step:
            assert top["logprob"] == pytest.approx(float(lp[top["id"]]), abs=atol)


def sprout_greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy continuation by full forward passes, and the log-probabilities at each step."""
    ids, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            lp = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
            logprobs.append(lp)
            ids.append(int(lp.argmax()))
    return ids[len(prompt) :], logprobs


@pytest.mark.parametrize("family", FAMILIES)
def test_llamacpp_greedy_tokens_and_logprobs_match_sprout(exported, family):
    folder, path = exported[family]
    model = load_model(folder).eval()
    expected, logprobs = sprout_greedy(model, PROMPT, 10)
    with llama_cpp(path) as post:
        r = post("/completion", {"prompt": PROMPT, "n_predict": 10, **GREEDY})
        tops = [llamacpp_logprobs(post, PROMPT + expected[:i]) for i in range(len(expected))]
    assert r["tokens"] == expected
    assert len(set(expected)) > 1 or family in ("qwen3", "qwen3_moe", "qwen2_moe")  # tied heads echo one token
    assert_logprobs_match(tops, logprobs)


def test_llamacpp_tokenizes_like_sprout(exported):
    """llama.cpp's "qwen2" pre-tokenizer + our vocabulary and merges give sprout's ids on mixed text, and
    llama.cpp decodes them back to the text."""
    texts = [
        "你好，世界！Hello, world. 1234567 + 89 = 1234656",
        "  leading spaces\tand\ttabs\n\n\nthree newlines\r\nCRLF   trailing   ",
        "I'm sure they'll say it's fine, DON'T you think? We've 2 cats' toys.",
        "保险公司的理赔流程：1）报案 2）提交材料；总计 ￥3,000.50 元…",
        "emoji 🙂🚀 and ünïcödé, １２３ fullwidth, ½ and ² and Ⅻ",
        "<|im_start|>user\n问题<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n答案<|im_end|>",
    ]
    tok = Tokenizer.load(default_tokenizer_dir())
    with llama_cpp(exported["qwen3"][1]) as post:
        for text in texts:
            got = post("/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"]
            assert got == tok.encode(text), text
            assert post("/detokenize", {"tokens": got})["content"] == text


def test_llamacpp_renders_the_gguf_chat_template_as_sprout(exported):
    """llama.cpp's own Jinja engine, on the template stored in the file, writes sprout's prompt."""
    conversations = [
        [{"role": "user", "content": "你好"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2+2?"},
        ],
        [
            {"role": "user", "content": "2*3?"},
            {"role": "assistant", "content": "6", "reasoning_content": "2*3=6"},
            {"role": "user", "content": "ok"},
        ],
    ]
    tok = Tokenizer.load(default_tokenizer_dir())
    with llama_cpp(exported["qwen3"][1]) as post:
        for messages in conversations:
            for thinking in (False, True):
                got = post(
                    "/apply-template", {"messages": messages, "chat_template_kwargs": {"enable_thinking": thinking}}
                )["prompt"]
                assert got == tok.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=thinking)


def test_split_regex_is_llamacpp_qwen2():
    """The exporter writes pre-tokenizer "qwen2" only because sprout's split regex is that one."""
    from sprout.export.gguf_export import QWEN2_SPLIT

    assert SPLIT_PATTERN == QWEN2_SPLIT


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_reader_reads_back_tensors_tokenizer_and_template(exported, family):
    folder, path = exported[family]
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    arch = {
        "qwen3": "qwen3",
        "llama": "llama",
        "qwen3_moe": "qwen3moe",
        "qwen2_moe": "qwen2moe",
        "deepseek_v3": "deepseek2",
        "qwen3_next": "qwen3next",
    }[family]
    assert field("general.architecture") == arch
    assert field("tokenizer.ggml.pre") == "qwen2"
    tok_json = json.loads((folder / "tokenizer.json").read_text())
    vocab = {i: t for t, i in tok_json["model"]["vocab"].items()}
    assert field("tokenizer.ggml.tokens") == [vocab[i] for i in range(len(vocab))]
    assert (
        field("tokenizer.chat_template") == json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    )
    assert field("tokenizer.ggml.eos_token_id") == 2 and field("tokenizer.ggml.padding_token_id") == 0
    types = field("tokenizer.ggml.token_type")
    assert types[1] == gguf.TokenType.CONTROL and types[3] == gguf.TokenType.USER_DEFINED  # <|im_start|>, <think>
    # Every tensor is there, bit-exact in f32 (numpy shape = reversed GGML dims, as the writer received it).
    model = load_model(folder)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("mtp.")}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    want = dict(gguf_tensors(state, json.loads((folder / "config.json").read_text())))
    got = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert set(got) == set(want)
    for name, t in want.items():
        np.testing.assert_array_equal(got[name].reshape(t.shape), t.numpy(), err_msg=name)


@pytest.mark.parametrize("family", ["qwen3", "llama", "qwen3_moe", "qwen2_moe"])
def test_transformers_gguf_loader_gives_sprout_logits(exported, family):
    """transformers reads qwen3 / llama / qwen3moe / qwen2moe GGUF weights (undoing llama's Q/K permutation).

    Its GGUF config reader (transformers 5.x) drops keys we write: attention.key_length for qwen3 (it
    assumes head_dim 128), expert_feed_forward_length for qwen3moe and qwen2moe (it assumes 768), and it
    assumes qwen2moe has q/k/v biases; so for those the folder's config.json is passed. The weights
    still come from the GGUF file alone."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, path = exported[family]
    kwargs = {} if family == "llama" else {"config": AutoConfig.from_pretrained(folder)}
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, **kwargs).eval()
    x = torch.tensor([PROMPT + [7, 8, 9, 1000, 2000]])
    with torch.no_grad():
        ours = load_model(folder).eval()(x).logits
        theirs = hf(x).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_smaller_dtypes_run_in_llamacpp_close_to_f32(exported, family, dtype, tmp_path):
    folder, _ = exported[family]
    path = write_gguf(folder, tmp_path / f"m-{dtype}.gguf", dtype)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    want = {
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[dtype]
    assert (
        types["token_embd.weight"] == want
        and types["blk.1.ffn_gate_exps.weight" if "blk.1.ffn_gate_exps.weight" in types else "blk.1.ffn_gate.weight"]
        == want
    )
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    _, logprobs = sprout_greedy(load_model(folder).eval(), PROMPT, 1)
    with llama_cpp(path) as post:
        tops = llamacpp_logprobs(post, PROMPT)
    assert_logprobs_match([tops], logprobs, atol=0.1)


def test_lora_adapter_folder_exports_merged(tmp_path):
    """`--model ADAPTER` (whose adapter_config.json names the base) exports base + adapter, merged."""
    from sprout.train.lora import apply_lora, save_adapter

    base = make_folder(tmp_path / "base", "qwen3")
    model = load_model(base)
    apply_lora(model, r=4, alpha=8.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a fresh adapter is a no-op (B = 0); make it change the model
    save_adapter(model, tmp_path / "adapter", base_model=str(base))
    path = export_gguf(tmp_path / "adapter", tmp_path / "merged.gguf", "f32")
    model.eval()
    expected, logprobs = sprout_greedy(model, PROMPT, 6)  # the unmerged adapter, computed by sprout
    base_tokens, _ = sprout_greedy(load_model(base).eval(), PROMPT, 6)
    assert expected != base_tokens
    with llama_cpp(path) as post:
        r = post("/completion", {"prompt": PROMPT, "n_predict": 6, **GREEDY})
        tops = [llamacpp_logprobs(post, PROMPT + expected[:i]) for i in range(len(expected))]
    assert r["tokens"] == expected
    assert_logprobs_match(tops, logprobs)


def test_cli_export_gguf_and_bad_input(tmp_path, capsys):
    from sprout.cli import main

    folder = make_folder(tmp_path / "m", "qwen3")
    main(["export", "gguf", "--model", str(folder), "--out", str(tmp_path / "m.gguf"), "--dtype", "q8_0"])
    assert "m.gguf" in capsys.readouterr().out
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    # Bad input: one line on stderr (`sprout: error: ...`), exit code 1.
    with pytest.raises(SystemExit) as e:
        main(["export", "gguf", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.gguf")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("sprout: error: ") and "config.json is missing" in err
    moe = make_folder(tmp_path / "moe", "qwen2_moe")  # renormalised routing: llama.cpp would compute another model
    cfg = json.loads((moe / "config.json").read_text())
    (moe / "config.json").write_text(json.dumps({**cfg, "norm_topk_prob": True}))
    with pytest.raises(SystemExit) as e:
        main(["export", "gguf", "--model", str(moe), "--out", str(tmp_path / "x.gguf")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("sprout: error: ") and "norm_topk_prob" in err
