"""`sprout bench`: FLOP counts against a hand count, the JSON last line, infer next to transformers."""

import json

import torch
from conftest import tiny_model

from sprout.bench.common import decode_flops_per_token, matmul_params, train_flops_per_token, weight_bytes
from sprout.cli import main


def test_flops_per_token_match_a_hand_count():
    model = tiny_model()
    c = model.config
    h, f, L = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * f  # q, k, v, o projections; gate, up, down
    n = L * per_layer + h * c.vocab_size  # + lm_head (tied or not, counted once); embeddings are a lookup
    assert matmul_params(model) == n
    assert train_flops_per_token(model, 100) == 6 * n + 12 * L * q * 100
    assert decode_flops_per_token(model, 10) == 2 * n + 4 * L * q * 10
    assert weight_bytes(model) == 4 * n


def test_bench_infer_prints_a_table_and_a_json_last_line_with_transformers_alongside(capsys, monkeypatch):
    monkeypatch.setattr(
        "sprout.bench.infer.peaks",
        lambda dev: {  # the real measurement takes seconds
            "peak_fp32_flops": 1e11,
            "peak_bf16_flops": 2e11,
            "peak_bandwidth_Bps": 1e10,
            "peak_source": "measured",
        },
    )
    main(
        [
            "bench",
            "infer",
            "--preset",
            "tiny",
            "--batch-sizes",
            "1,3",
            "--new-tokens",
            "6",
            "--prompt-len",
            "5",
            "--rounds",
            "1",
            "--compare-hf",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    res = json.loads(out[-1])
    assert [(r["engine"], r["batch"]) for r in res["rows"]] == [
        ("sprout", 1),
        ("transformers", 1),
        ("sprout", 3),
        ("transformers", 3),
    ]
    r = res["rows"][0]
    assert r["tokens_per_s"] > 0 and r["ceiling_fraction"] == r["tokens_per_s"] / (1e10 / res["weight_bytes"])
    assert set(res["ratios"]) == {
        "sprout_vs_transformers_b1",
        "sprout_vs_transformers_b3",
        "sprout_b3_vs_b1",
        "transformers_b3_vs_b1",
    }
    assert any(line.startswith("| sprout | 3 |") for line in out)


def test_greedy_tokens_of_sprout_and_transformers_agree_on_the_benchmarked_folder(tmp_path):
    """The infer benchmark times both on the same weights; they must also produce the same tokens."""
    from transformers import AutoModelForCausalLM

    from sprout.bench.infer import make_prompts
    from sprout.infer.generate import SamplingConfig, generate
    from sprout.models.hub import save_model

    model = tiny_model()
    save_model(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = make_prompts("synthetic", 1, 7, model.config.vocab_size, None)[0]
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=8, temperature=0, stop_token_ids=[]))[0]
    theirs = hf.generate(
        torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, 7:].tolist()
    assert ours == theirs


def test_bench_train_keeps_its_flags_and_reports_mfu_against_the_peak(capsys, monkeypatch):
    monkeypatch.setattr(
        "sprout.bench.train.peaks",
        lambda dev: {
            "peak_fp32_flops": 1e11,
            "peak_bf16_flops": 4e11,
            "peak_bandwidth_Bps": 1e10,
            "peak_source": "measured",
        },
    )
    main(
        [
            "bench",
            "train",
            "--preset",
            "tiny",
            "--dtypes",
            "fp32,bf16",
            "--seq-len",
            "16",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--device",
            "cpu",
        ]
    )
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    fp32, bf16 = rows
    assert fp32["dtype"] == "fp32" and bf16["dtype"] == "bf16"
    assert fp32["mfu"] == fp32["model_flops_per_s"] / 1e11 and bf16["mfu"] == bf16["model_flops_per_s"] / 4e11
    assert fp32["model_flops_per_s"] == fp32["tokens_per_s"] * train_flops_per_token(tiny_model(), 16)


def test_real_prompts_are_tokenised_texts_of_about_the_asked_length(tmp_path):
    from sprout.bench.infer import make_prompts
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(default_tokenizer_dir())
    f = tmp_path / "p.jsonl"
    f.write_text('{"text": "Car insurance covers damage to your car and to other people\'s property."}\n' * 3)
    got = make_prompts(str(f), 2, 8, tok.vocab_size, None)
    assert got == [tok.encode("Car insurance covers damage to your car and to other people's property.")[:8]] * 2
    assert all(4 <= len(p) <= 8 for p in make_prompts("builtin", 3, 8, tok.vocab_size, None))


def test_bench_serve_drives_a_real_server_and_counts_the_same_tokens_as_in_process(tmp_path, capsys):
    """The serving benchmark starts `sprout serve` in a child process and streams from it; greedy tokens
    counted from `usage` must equal what in-process decoding of the same prompts produced."""
    from sprout.models.hub import save_model
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    save_model(tiny_model(), tmp_path)
    Tokenizer.load(default_tokenizer_dir()).save(tmp_path)
    main(
        [
            "bench",
            "serve",
            "--model",
            str(tmp_path),
            "--clients",
            "2",
            "--max-tokens",
            "5",
            "--rounds",
            "1",
            "--prompt-len",
            "6",
            "--threads",
            "1",
        ]
    )
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["errors"] == 0
    ph = res["phases"]
    assert ph["server_1"][0]["tokens"] == ph["inproc_1"][0]["tokens"] > 0
    assert ph["server_2"][0]["tokens"] == ph["inproc_2"][0]["tokens"] >= ph["server_1"][0]["tokens"]
    assert set(res["ratios"]) == {"server_2_vs_1", "server_1_vs_inproc_1", "server_2_vs_inproc_2"}


def test_bench_train_flags_reach_the_train_config_the_step_and_the_row(capsys, monkeypatch):
    from sprout.bench import train
    from sprout.train.objectives import lm

    monkeypatch.setattr(
        "sprout.bench.train.peaks",
        lambda dev: {"peak_fp32_flops": 1e11, "peak_bf16_flops": 4e11, "peak_source": "measured"},
    )
    configs, chunked = [], []
    real_bench, real_ce = train.bench_train, lm.linear_cross_entropy
    monkeypatch.setattr(train, "bench_train", lambda cfg, *a: configs.append(cfg) or real_bench(cfg, *a))
    monkeypatch.setattr(lm, "linear_cross_entropy", lambda *a: chunked.append(a[-1]) or real_ce(*a))
    flags = ["--ce-chunk", "8", "--optimizer", "muon", "--grad-checkpoint", "--compile", "--dtype", "fp32"]
    main(
        [
            "bench",
            "train",
            "--preset",
            "tiny",
            "--seq-len",
            "16",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--device",
            "cpu",
            *flags,
        ]
    )
    (cfg,) = configs
    assert (cfg.ce_chunk, cfg.optimizer, cfg.grad_checkpoint, cfg.compile) == (8, "muon", True, True)
    assert chunked == [8, 8]  # the objective's chunked loss ran in the warm-up step and the timed one
    out = capsys.readouterr().out
    (row,) = json.loads(out.strip().splitlines()[-1])["rows"]
    assert row["dtype"] == "fp32" and (row["ce_chunk"], row["optimizer"], row["grad_checkpoint"]) == (8, "muon", True)
    assert "ce_chunk=8 optimizer=muon grad_checkpoint=True compile=True" in out


def test_bench_train_real_data_is_packed_text_a_fresh_batch_a_step(tmp_path, capsys):
    from sprout.bench.train import make_batches
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(default_tokenizer_dir())
    texts = [f"Policy {i} covers fire, flood and theft for the home and its contents." for i in range(40)]
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    stream = [t for text in texts for t in [*tok.encode(text), tok.doc_sep_id]]
    batches = make_batches(str(f), tok.vocab_size, 2, 16, 3)
    # three distinct batches, cut in order from the documents joined by their separators
    assert [b["input_ids"].tolist() for b in batches] != [batches[0]["input_ids"].tolist()] * 3
    flat = torch.cat([torch.cat([b["input_ids"], b["labels"][:, -1:]], 1).reshape(-1) for b in batches])
    assert flat.tolist() == stream[: 3 * 2 * 17]
    assert torch.equal(batches[1]["labels"][:, :-1], batches[1]["input_ids"][:, 1:])
    # too little text, or a vocabulary the preset cannot hold: one line naming what to change, exit 1
    for argv, expect in (
        (["--preset", "cpu", "--steps", "99", "--data", str(f)], f"{f}: "),
        (["--preset", "tiny", "--data", str(f)], "more than this preset's vocab_size 512"),
    ):
        try:
            main(["bench", "train", "--dtypes", "fp32", "--seq-len", "16", "--batch-size", "2", *argv])
        except SystemExit as e:
            assert e.code == 1
        else:
            raise AssertionError("no error")
        assert expect in capsys.readouterr().err


def test_bench_data_with_a_bad_record_names_its_line_and_skip_invalid_skips_it(tmp_path, capsys):
    from sprout.bench.infer import make_prompts
    from sprout.bench.train import make_batches
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(default_tokenizer_dir())
    good = [json.dumps({"text": f"Policy {i} covers fire, flood and theft for the home."}) for i in range(40)]
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join([*good[:3], '{"text": "unterminated', *good[3:]]) + "\n")
    # without the flag: the reader's message, naming the file and line 4, and the flag to pass
    try:
        main(["bench", "train", "--dtypes", "fp32", "--seq-len", "16", "--batch-size", "2", "--data", str(f)])
    except SystemExit as e:
        assert e.code == 1
    else:
        raise AssertionError("no error")
    err = capsys.readouterr().err
    assert f"{f}:4" in err and "--skip-invalid" in err and "Traceback" not in err
    # with it, the same batches as from the file without the bad line
    clean = tmp_path / "clean.jsonl"
    clean.write_text("\n".join(good) + "\n")
    skipped = make_batches(str(f), tok.vocab_size, 2, 16, 3, skip_invalid=True)
    expected = make_batches(str(clean), tok.vocab_size, 2, 16, 3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(skipped, expected, strict=True))
    prompts = make_prompts(str(f), 4, 8, tok.vocab_size, None, skip_invalid=True)
    assert prompts == make_prompts(str(clean), 4, 8, tok.vocab_size, None)
