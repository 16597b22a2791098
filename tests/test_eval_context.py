"""The 1x/2x/4x context-length table."""

import json
import math

import torch
import torch.nn.functional as F
from conftest import tiny_model

from sprout.eval.context import context_length_table
from sprout.tokenizer import Tokenizer, default_tokenizer_dir


def test_context_table_rows(tmp_path):
    tok = Tokenizer.load(default_tokenizer_dir())
    model = tiny_model(vocab_size=tok.vocab_size)
    data = tmp_path / "t.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"Policy {i} covers fire, flood and theft."}) + "\n" for i in range(300))
    )
    rows = context_length_table(model, tok, str(data), train_len=16, max_windows=3)
    assert [r["length"] for r in rows] == [16, 32, 64]
    one = rows[0]
    # factor 1: every method is plain RoPE
    assert all(math.isclose(one[k], one["none"], rel_tol=1e-5) for k in ("linear", "ntk", "yarn"))
    # and plain RoPE at 2x differs from YaRN at 2x (the scaling is really applied)
    assert not math.isclose(rows[1]["none"], rows[1]["yarn"], rel_tol=1e-4)
    # the first row equals a direct computation over the same windows
    stream = []
    for i in range(300):
        stream += tok.encode(f"Policy {i} covers fire, flood and theft.") + [tok.pad_id]
    x = torch.tensor(stream[: 3 * 17]).view(3, 17)
    with torch.no_grad():
        nll = F.cross_entropy(model(x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
    assert math.isclose(one["none"], math.exp(float(nll)), rel_tol=1e-4)
