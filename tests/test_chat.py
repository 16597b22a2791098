"""The terminal chat loop, driven with scripted input."""

import io

from conftest import tiny_model

from sprout.infer.chat import ChatSession, run_chat, split_thinking
from sprout.infer.generate import SamplingConfig
from sprout.tokenizer import Tokenizer, default_tokenizer_dir


def _session(**kw):
    tok = Tokenizer.load(default_tokenizer_dir())
    model = tiny_model(vocab_size=tok.vocab_size)
    return ChatSession(model, tok, SamplingConfig(max_new_tokens=6, temperature=0, seed=0), **kw), tok


def test_chat_commands_history_and_prompt_rendering():
    session, tok = _session(system="You are brief.")
    inputs = iter(["你好", "/think on", "And now?", "/reset", "/quit"])
    out = io.StringIO()
    run_chat(session, read=lambda _: next(inputs), out=out)
    text = out.getvalue()
    assert "(thinking on)" in text and "(history cleared)" in text
    assert session.history == []  # /reset emptied it


def test_prompt_prefills_empty_think_block_when_thinking_is_off():
    session, tok = _session()
    session.history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    off = tok.decode(session.prompt_ids("next"))
    session.thinking = True
    on = tok.decode(session.prompt_ids("next"))
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on.endswith("<|im_start|>assistant\n") and "hello" in on


def test_reply_is_added_to_history_without_thinking():
    session, _ = _session()
    reply = "".join(session.reply_stream("What is insurance?"))
    assert session.history[0] == {"role": "user", "content": "What is insurance?"}
    assert session.history[1]["content"] == split_thinking(reply)[1]
    assert split_thinking("<think>\nplan\n</think>\n\nanswer") == ("plan", "answer")
