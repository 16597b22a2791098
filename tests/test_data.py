"""Data pipeline: validation messages, file formats, pre-tokenization, packing, built-in corpora."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sprout.data import builtin
from sprout.data.datasets import IGNORE_INDEX, PretrainDataset, SFTDataset, pack_best_fit
from sprout.data.readers import DataError, ReadStats, read_records
from sprout.data.tokenized import tokenize_pretrain, tokenize_sft
from sprout.tokenizer import Tokenizer, default_tokenizer_dir, normalize_record

SFT_RECORDS = [
    {
        "conversations": [
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！有什么可以帮你？"},
            {"role": "user", "content": "什么是免赔额？"},
            {"role": "assistant", "content": "免赔额是损失中由被保险人自己承担的部分。"},
        ]
    },
    {
        "conversations": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Is renters insurance required?"},
            {"role": "assistant", "content": "No law requires it, but many landlords ask for it."},
        ]
    },
    {
        "conversations": [
            {"role": "user", "content": "3 乘以 7 等于几？"},
            {"role": "assistant", "reasoning_content": "3 × 7 = 21。", "content": "等于 21。"},
        ]
    },
    {
        "conversations": [
            {
                "role": "system",
                "content": "You can call tools.",
                "tools": json.dumps(
                    [
                        {
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "description": "Current weather",
                                "parameters": {
                                    "type": "object",
                                    "properties": {"city": {"type": "string"}},
                                    "required": ["city"],
                                },
                            },
                        }
                    ]
                ),
            },
            {"role": "user", "content": "What's the weather in Hangzhou?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": json.dumps([{"name": "get_weather", "arguments": {"city": "Hangzhou"}}]),
            },
            {"role": "tool", "content": '{"city": "Hangzhou", "weather": "light rain"}'},
            {"role": "assistant", "content": "Hangzhou has light rain right now."},
        ]
    },
]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.load(default_tokenizer_dir())


# ---- validation and error messages ----------------------------------------------------------


def test_bad_json_reports_file_line_and_column(tmp_path):
    p = write_jsonl(tmp_path / "pre.jsonl", [{"text": "a"}, "", '{"text": "b",, }'])
    with pytest.raises(DataError) as e:
        list(read_records(p, "pretrain"))
    assert str(e.value).startswith(f"{p}:3: invalid JSON: ")
    assert "column 14" in str(e.value)


def test_wrong_role_message_is_exact(tmp_path):
    bad = {
        "conversations": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "bot", "content": "x"},
        ]
    }
    p = write_jsonl(tmp_path / "sft.jsonl", [SFT_RECORDS[0], bad])
    with pytest.raises(DataError) as e:
        list(read_records(p, "sft"))
    assert str(e.value) == f"{p}:2: conversations[2].role must be one of system, user, assistant, tool, got 'bot'"


def test_missing_text_and_bad_tool_calls(tmp_path):
    p = write_jsonl(tmp_path / "pre.jsonl", [{"txt": "oops"}])
    with pytest.raises(DataError, match=rf"^{p}:1: missing field 'text'$"):
        list(read_records(p, "pretrain"))
    rec = json.loads(json.dumps(SFT_RECORDS[3]))
    rec["conversations"][2]["tool_calls"] = '[{"name": "get_weather", "arguments": {'
    p = write_jsonl(tmp_path / "sft.jsonl", [SFT_RECORDS[1], SFT_RECORDS[2], rec])
    with pytest.raises(DataError) as e:
        list(read_records(p, "sft"))
    assert str(e.value).startswith(f"{p}:3: conversations[2].tool_calls is not valid JSON")


def test_sft_needs_an_assistant_turn(tmp_path):
    p = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match="no assistant message"):
        list(read_records(p, "sft"))
    # The same record is a valid RL prompt.
    assert len(list(read_records(p, "rlaif"))) == 1


def test_skip_invalid_counts_and_keeps_first_error(tmp_path):
    p = write_jsonl(tmp_path / "pre.jsonl", [{"text": "one"}, "{broken", {"text": ""}, {"text": "two"}, {"text": 3}])
    with pytest.raises(DataError):
        list(read_records(p, "pretrain"))
    stats = ReadStats()
    recs = list(read_records(p, "pretrain", skip_invalid=True, stats=stats))
    assert [r["text"] for r in recs] == ["one", "two"]
    assert (stats.read, stats.skipped) == (2, 3)
    assert stats.errors[0].startswith(f"{p}:2: invalid JSON")
    assert stats.errors[1] == f"{p}:3: text is empty"
    assert "skipped 3 invalid records (first: " in stats.summary()


def test_other_kinds_validate(tmp_path):
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    dpo_ok = {"chosen": msgs, "rejected": [msgs[0], {"role": "assistant", "content": "5"}]}
    dpo_bad = {"chosen": msgs, "rejected": msgs[:1]}
    p = write_jsonl(tmp_path / "dpo.jsonl", [dpo_ok, dpo_bad])
    with pytest.raises(DataError, match=rf"^{p}:2: rejected must end with an assistant message"):
        list(read_records(p, "dpo"))
    agent = {"conversations": msgs[:1], "gt": ["4"]}
    p = write_jsonl(tmp_path / "agent.jsonl", [agent, {"conversations": msgs[:1]}])
    with pytest.raises(DataError, match=rf"^{p}:2: missing field 'gt'$"):
        list(read_records(p, "agent_rl"))


def test_json_list_reports_the_line_of_the_record(tmp_path):
    p = tmp_path / "pre.json"
    p.write_text('[\n  {"text": "a"},\n  {"text": "b"},\n  {"tex": "c"}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{p}:4: missing field 'text'$"):
        list(read_records(p, "pretrain"))
    p.write_text('[\n  {"text": "a"},\n  {"text": "b"}\n]\n', encoding="utf-8")
    assert [r["text"] for r in read_records(p, "pretrain")] == ["a", "b"]


def test_parquet_and_folder_of_shards_match_jsonl(tmp_path):
    jsonl = write_jsonl(tmp_path / "all.jsonl", SFT_RECORDS)
    expected = list(read_records(jsonl, "sft"))
    assert expected == SFT_RECORDS

    pq.write_table(pa.Table.from_pylist(SFT_RECORDS), tmp_path / "all.parquet")
    assert list(read_records(tmp_path / "all.parquet", "sft")) == SFT_RECORDS

    shards = tmp_path / "shards"
    (shards / "b").mkdir(parents=True)
    write_jsonl(shards / "a-000.jsonl", SFT_RECORDS[:1])
    pq.write_table(pa.Table.from_pylist(SFT_RECORDS[1:3]), shards / "a-001.parquet")
    (shards / "b" / "c.json").write_text(json.dumps(SFT_RECORDS[3:]), encoding="utf-8")
    (shards / "notes.txt").write_text("ignored")
    assert list(read_records(shards, "sft")) == SFT_RECORDS

    bad = json.loads(json.dumps(SFT_RECORDS[1:3]))
    bad[1]["conversations"][0]["role"] = "bot"
    pq.write_table(pa.Table.from_pylist(bad), shards / "a-001.parquet")
    with pytest.raises(DataError, match=rf"^{shards / 'a-001.parquet'}:2: conversations\[0\].role"):
        list(read_records(shards, "sft"))


# ---- pre-tokenization and datasets ----------------------------------------------------------


def test_pretrain_shards_and_windows_reproduce_the_stream(tmp_path, tok):
    texts = [f"Document {i}: 保险是一种风险转移的工具。 A term life policy pays {i} dollars." for i in range(60)]
    meta = tokenize_pretrain([{"text": t} for t in texts], tok, tmp_path / "pt", val_fraction=0.1, seed=3)
    assert meta["dtype"] == "uint16" and meta["val"]["docs"] > 0
    assert meta["train"]["docs"] + meta["val"]["docs"] == 60
    train = np.fromfile(tmp_path / "pt" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "pt" / "val.bin", dtype=np.uint16)
    # Each split is its documents in order, each followed by the separator 0; together they are all documents.
    docs = [[]]
    for x in np.concatenate([train, val]).tolist():
        if x == 0:
            docs.append([])
        else:
            docs[-1].append(x)
    assert sorted(docs[:-1]) == sorted(tok.encode(t) for t in texts) and docs[-1] == []
    assert meta["train"]["tokens"] == len(train)

    T = 16
    ds = PretrainDataset(tmp_path / "pt" / "train.bin", T)
    assert len(ds) == (len(train) - 1) // T
    items = [ds[i] for i in range(len(ds))]
    stream = torch.cat([it["input_ids"] for it in items] + [items[-1]["labels"][-1:]])
    assert torch.equal(stream, torch.from_numpy(train[: len(ds) * T + 1].astype(np.int64)))
    for it in items:
        assert torch.equal(it["input_ids"][1:], it["labels"][:-1])

    # Same inputs: the cache is reused. Other split parameters: rebuilt.
    again = tokenize_pretrain([{"text": t} for t in texts], tok, tmp_path / "pt", val_fraction=0.1, seed=3)
    assert again["cached"] and again["train"] == meta["train"]
    other = tokenize_pretrain([{"text": t} for t in texts], tok, tmp_path / "pt", val_fraction=0.3, seed=3)
    assert not other["cached"] and other["val"]["docs"] > meta["val"]["docs"]


def test_pretrain_from_file_reports_skipped(tmp_path, tok):
    p = write_jsonl(tmp_path / "pre.jsonl", [{"text": "hello world"}, {"text": ""}, {"text": "second doc"}])
    with pytest.raises(DataError, match=rf"^{p}:2: text is empty$"):
        tokenize_pretrain(p, tok, tmp_path / "a", val_fraction=0.0)
    meta = tokenize_pretrain(p, tok, tmp_path / "b", val_fraction=0.5, skip_invalid=True)
    assert meta["skipped"] == 1 and meta["skipped_examples"][0].startswith(f"{p}:2:")
    assert meta["train"]["docs"] == 1 and meta["val"]["docs"] == 1  # a tiny set still gets a val doc


def test_tiny_sets_still_get_one_validation_document(tmp_path, tok):
    texts = ["first document", "second document", "third document"]
    meta = tokenize_pretrain(texts, tok, tmp_path / "pt", val_fraction=1e-9)
    val = np.fromfile(tmp_path / "pt" / "val.bin", dtype=np.uint16).tolist()
    assert meta["val"]["docs"] == 1 and val == tok.encode(texts[-1]) + [0]
    assert meta["train"]["tokens"] == (tmp_path / "pt" / "train.bin").stat().st_size // 2

    meta = tokenize_sft(SFT_RECORDS, tok, tmp_path / "sft", seq_len=512, val_fraction=1e-9)
    assert meta["val"]["conversations"] == 1
    ids, mask = tok.encode_chat(*normalize_record(SFT_RECORDS[-1]))
    assert np.fromfile(tmp_path / "sft" / "val" / "tokens.bin", dtype=np.uint16).tolist() == ids
    assert np.fromfile(tmp_path / "sft" / "val" / "mask.bin", dtype=np.uint8).tolist() == [int(m) for m in mask]
    offsets = np.load(tmp_path / "sft" / "train" / "offsets.npy")
    assert offsets[-1] == (tmp_path / "sft" / "train" / "mask.bin").stat().st_size == meta["train"]["tokens"]


def _sft_dir(tmp_path, tok, records, seq_len=512) -> tuple[Path, dict]:
    meta = tokenize_sft(records, tok, tmp_path / "sft", seq_len=seq_len, val_fraction=0.0)
    return tmp_path / "sft" / "train", meta


def test_sft_labels_are_exactly_the_assistant_tokens(tmp_path, tok):
    d, meta = _sft_dir(tmp_path, tok, SFT_RECORDS)
    assert meta["train"]["conversations"] == len(SFT_RECORDS) and meta["truncated"] == 0
    ds = SFTDataset(d, 512, pack=False)
    assert len(ds) == len(SFT_RECORDS)
    for i, rec in enumerate(SFT_RECORDS):
        ids, mask = tok.encode_chat(*normalize_record(rec))
        item = ds[i]
        n = len(ids)
        assert item["input_ids"][:n].tolist() == ids
        assert (item["input_ids"][n:] == tok.pad_id).all()
        want = [ids[t + 1] if mask[t + 1] else IGNORE_INDEX for t in range(n - 1)] + [IGNORE_INDEX] * (512 - n + 1)
        assert item["labels"].tolist() == want
        assert (item["labels"] != IGNORE_INDEX).sum() == sum(mask[1:]) > 0


def test_sft_truncates_long_conversations(tmp_path, tok):
    long = {
        "conversations": [
            {"role": "user", "content": "Tell me a story."},
            {"role": "assistant", "content": "Once upon a time " * 200},
        ]
    }
    meta = tokenize_sft([long, SFT_RECORDS[1]], tok, tmp_path / "s", seq_len=64, val_fraction=0.0)
    assert meta["truncated"] == 1
    assert np.diff(np.load(tmp_path / "s" / "train" / "offsets.npy")).max() == 64


def test_pack_best_fit_places_everything_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=500)
    rows = pack_best_fit(lengths, 128)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(500))
    assert max(sum(lengths[i] for i in r) for r in rows) <= 128
    assert rows == pack_best_fit(lengths, 128)  # deterministic
    assert len(rows) <= int(np.ceil(lengths.sum() / 128 * 1.1))  # and tight


def test_packed_rows_keep_conversations_apart(tmp_path, tok):
    from sprout.models import build_model, model_preset

    d, _ = _sft_dir(tmp_path, tok, SFT_RECORDS)
    T = 256
    ds = SFTDataset(d, T, pack=True)
    assert len(ds) < len(SFT_RECORDS)
    row = next(ds[i] for i in range(len(ds)) if ds[i]["doc_ids"].max() >= 2)  # >= 2 conversations + padding
    doc, pos = row["doc_ids"], row["position_ids"]

    # The mask doc_ids implies (same doc and causal) is block-diagonal causal: each conversation is one
    # contiguous block, and no token may look at a token of another block.
    allowed = (doc[:, None] == doc[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    starts = [0] + (torch.nonzero(doc[1:] != doc[:-1]).flatten() + 1).tolist()
    assert doc[starts].tolist() == list(range(len(starts)))  # blocks 0, 1, 2, ... in order
    bounds = starts + [T]
    block = torch.zeros(T, T, dtype=torch.bool)
    for a, b in zip(bounds[:-1], bounds[1:]):
        block[a:b, a:b] = True
    assert torch.equal(allowed, block.tril())
    # Labels never point across a boundary: the last position of every conversation is -100.
    ends = torch.nonzero(doc[1:] != doc[:-1]).flatten()
    assert (row["labels"][ends] == IGNORE_INDEX).all()

    torch.manual_seed(0)
    model = build_model(model_preset("tiny", vocab_size=tok.vocab_size)).eval()
    with torch.no_grad():
        packed = model(row["input_ids"][None], position_ids=pos[None], doc_ids=doc[None]).logits[0]
        n_conv = int(doc.max())  # the padding id; conversations are 0..n_conv-1
        for j in range(n_conv):
            sel = doc == j
            assert pos[sel].tolist() == list(range(int(sel.sum())))
            alone = model(row["input_ids"][sel][None]).logits[0]
            torch.testing.assert_close(packed[sel], alone, atol=1e-5, rtol=0)


def test_packing_beats_padding(tmp_path, tok):
    d, _ = _sft_dir(tmp_path, tok, SFT_RECORDS * 5)
    packed, padded = SFTDataset(d, 512, pack=True).stats(), SFTDataset(d, 512, pack=False).stats()
    assert packed["tokens"] == padded["tokens"]
    assert packed["rows"] < padded["rows"] and packed["pad_fraction"] < padded["pad_fraction"]


# ---- built-in data --------------------------------------------------------------------------


def test_clean_question_en():
    assert (
        builtin.clean_question_en("Is  Disability  Insurance  Required  By  Law?")
        == "Is disability insurance required by law?"
    )
    assert (
        builtin.clean_question_en("What  Does  AAA  Cover  If  I'm  In  A  Long-Term  Plan?")
        == "What does AAA cover if I'm in a long-term plan?"
    )


def test_insuranceqa_choice_is_valid_and_never_test():
    import insuranceqa_data

    items = builtin.insuranceqa_choice("valid", lang="en", seed=1, limit=50)
    assert len(items) == 50
    valid, answers = insuranceqa_data.load_valid(), insuranceqa_data.load_answers()
    by_question = {builtin.clean_question_en(q["en"]): q for q in valid.values()}
    golds = []
    for it in items:
        assert len(it["options"]) == 4 and len(set(it["options"])) == 4
        q = by_question[it["question"]]
        assert it["options"][it["answer"]] == " ".join(answers[q["answers"][0]]["en"].split())
        golds.append(it["answer"])
    assert len(set(golds)) > 1  # the gold position is shuffled
    assert builtin.insuranceqa_choice("valid", "zh", seed=1, limit=5) == builtin.insuranceqa_choice(
        "valid", "zh", seed=1, limit=5
    )
    with pytest.raises(ValueError, match="test split is reserved"):
        builtin.insuranceqa_choice("test")


def test_insuranceqa_options_do_not_give_the_answer_away_by_length():
    """The dataset's negatives are longer than its gold answers; drawn from the whole pool, picking the
    shortest option finds the gold one about half the time. Length-matched items leave length at chance."""

    def shortest_picks_gold(items: list[dict]) -> float:
        hits = [min(range(4), key=lambda j: len(it["options"][j])) == it["answer"] for it in items]
        return sum(hits) / len(hits)

    for lang in ("zh", "en"):
        matched = builtin.insuranceqa_choice("valid", lang, limit=600)
        whole_pool = builtin.insuranceqa_choice("valid", lang, limit=600, length_matched=False)
        assert len(matched) == 600 and shortest_picks_gold(whole_pool) > 0.4
        assert 0.2 < shortest_picks_gold(matched) < 0.3
        ratios = sorted(
            len(it["options"][it["answer"]]) / len(o)
            for it in matched
            for j, o in enumerate(it["options"])
            if j != it["answer"]
        )
        assert 0.9 < ratios[len(ratios) // 2] < 1.1  # the median gold / negative length ratio


def test_builtin_training_text_is_disjoint_from_heldout_splits():
    import insuranceqa_data

    pairs = builtin.insuranceqa_train_pairs()
    assert len(pairs) > 12000
    trained_q = {p[0] for p in pairs} | {p[1] for p in pairs}
    trained_a = {p[2] for p in pairs} | {p[3] for p in pairs}
    answers = insuranceqa_data.load_answers()
    for split in (insuranceqa_data.load_test(), insuranceqa_data.load_valid()):
        for q in split.values():
            assert builtin.clean_question_en(q["en"]) not in trained_q
            assert " ".join(q["zh"].split()) not in trained_q
            for a in q["answers"]:
                assert " ".join(answers[a]["en"].split()) not in trained_a


def test_builtin_sft_is_valid_sft_and_heldout_free(tmp_path):
    import insuranceqa_data

    path = builtin.write_builtin("sft", tmp_path / "sft.jsonl")
    recs = list(read_records(path, "sft"))
    assert len(recs) > 30000
    users = {m["content"] for r in recs for m in r["conversations"] if m["role"] == "user"}
    test_q = {builtin.clean_question_en(q["en"]) for q in insuranceqa_data.load_test().values()}
    test_q |= {" ".join(q["zh"].split()) for q in insuranceqa_data.load_test().values()}
    assert not users & test_q
    langs = [any("\u4e00" <= ch <= "\u9fff" for ch in r["conversations"][-1]["content"]) for r in recs]
    assert 0.35 < sum(langs) / len(langs) < 0.65  # roughly half zh, half en
    assert any(r["conversations"][0]["role"] == "system" for r in recs)


# ---- MiniMind files -------------------------------------------------------------------------


def test_minimind_files_names_what_is_missing(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "pretrain_hq.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="missing sft_mini_512.jsonl"):
        builtin.minimind_files(tmp_path)
    found = builtin.minimind_files(tmp_path, ["pretrain_hq.jsonl"])
    assert found["pretrain_hq.jsonl"] == tmp_path / "dataset" / "pretrain_hq.jsonl"


def test_download_minimind_offline_and_without_clients(tmp_path, monkeypatch):
    import huggingface_hub

    for mod in ("modelscope", "modelscope.hub", "modelscope.hub.snapshot_download"):
        monkeypatch.setitem(sys.modules, mod, None)  # import fails: modelscope "not installed"

    def offline(**kw):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(SystemExit) as e:
        builtin.download_minimind(tmp_path / "mm")
    msg = str(e.value)
    assert "offline" in msg and "Network is unreachable" in msg and str(tmp_path / "mm") in msg

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(SystemExit, match="pip install modelscope"):
        builtin.download_minimind(tmp_path / "mm")
