"""Tools: the calculator parser (no eval), units, dates, call parsing, built-in data, chat execution."""

from __future__ import annotations

import io
import json

import pytest

from sprout.tools import parse_tool_calls, run_tool, tool_specs
from sprout.tools.calculator import CalcError, evaluate
from sprout.tools.dates import date_calc
from sprout.tools.units import convert


@pytest.mark.parametrize(
    "expr,value",
    [
        ("1+2*3", 7),
        ("(1+2)*3", 9),
        ("2**3**2", 512),
        ("-2**2", -4),
        ("7/2", 3.5),
        ("7//2", 3),
        ("7 % 4", 3),
        ("2^10", 1024),
        ("sqrt(16)+1", 5),
        ("0.1+0.2", 0.3),
        ("12 × 3 ÷ 4", 9),
        ("-(3-5)", 2),
        ("347 * 29", 10063),
    ],
)
def test_calculator(expr, value):
    assert evaluate(expr) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["__import__('os')", "1/0", "2**99999", "1+", "()", "a", "1;2", "[1]"])
def test_calculator_rejects(bad):
    with pytest.raises(CalcError):
        evaluate(bad)
    assert run_tool("calculator", {"expression": bad}).startswith("error:")


def test_units_and_dates():
    assert convert(100, "celsius", "fahrenheit") == 212
    assert convert(1, "mile", "km") == pytest.approx(1.609344)
    assert convert(2, "公斤", "g") == 2000
    with pytest.raises(ValueError):
        convert(1, "kg", "m")
    assert date_calc("add_days", "2024-02-27", 3) == "2024-03-01"
    assert date_calc("days_between", "2024-01-01", other_date="2025-01-01") == 366
    assert date_calc("weekday", "2024-06-01") == "Saturday"


def test_run_tool_and_parse():
    assert run_tool("calculator", '{"expression": "6*7"}') == "42"
    assert run_tool("nope", {}).startswith("error: unknown tool")
    assert run_tool("unit_convert", {"value": 1}).startswith("error:")


def test_run_tool_answers_wrongly_typed_arguments_with_an_error_text():
    """Calls a policy wrote during agentic RL: each must come back as an error the model reads, never raise
    (`"from_unit": 5` once stopped a 20-minute run with AttributeError deep inside the unit table)."""
    cases = {
        (
            "unit_convert",
            '{"value": 3, "from_unit": 5, "to_unit": "kg"}',
        ): "error: argument 'from_unit' must be a string, got 5",
        (
            "unit_convert",
            '{"value": "3", "from_unit": "lb", "to_unit": "kg"}',
        ): "error: argument 'value' must be a number",
        (
            "unit_convert",
            '{"value": true, "from_unit": "lb", "to_unit": "kg"}',
        ): "error: argument 'value' must be a number",
        ("calculator", '{"expression": 12}'): "error: argument 'expression' must be a string, got 12",
        ("calculator", '{"expression": "1+1", "x": 1}'): "error: unknown argument 'x' for calculator",
        (
            "date_calc",
            '{"operation": "add_days", "date": "2024-01-01", "days": 1.5}',
        ): "error: argument 'days' must be an integer",
        ("date_calc", '{"operation": "weekday"}'): "error: missing argument 'date' for date_calc",
    }
    for (name, args), expected in cases.items():
        assert run_tool(name, args).startswith(expected), (name, args)
    assert run_tool("unit_convert", '{"value": 2, "from_unit": "kg", "to_unit": "g"}') == "2000"
    text = (
        'x<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>'
        "<tool_call>{bad</tool_call>"
    )
    calls = parse_tool_calls(text)
    assert calls[0] == {"name": "calculator", "arguments": {"expression": "1+1"}} and calls[1]["name"] is None
    assert [s["function"]["name"] for s in tool_specs()] == ["calculator", "unit_convert", "date_calc"]


def test_builtin_tool_data_is_correct():
    from sprout.data.builtin_sets import record_calls, tool_eval_questions, tool_records
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir, normalize_record

    recs = tool_records(200)
    tok = Tokenizer.load(default_tokenizer_dir())
    calls, direct, listed, turns = [], 0, [], []
    for r in recs:
        assistant = tok.decode([i for i, m in zip(*tok.encode_chat(*normalize_record(r))) if m])
        msgs = r["conversations"]
        names = [t["function"]["name"] for t in r["tools"]]
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        turns.append(len(users))
        for i in users:
            if "tool_calls" not in msgs[i + 1]:  # tools offered, question needs none: answered directly
                direct += 1
                assert len(names) == 3 and "<tool_call>" not in msgs[i + 1]["content"]
                continue
            call = msgs[i + 1]["tool_calls"][0]["function"]
            calls.append(call)
            listed.append(names)
            assert call["name"] in names
            result = msgs[i + 2]["content"]
            assert msgs[i + 2]["role"] == "tool" and result == run_tool(call["name"], call["arguments"])
            assert not result.startswith("error")
            if call["name"] == "calculator":
                a, op, b = call["arguments"]["expression"].split()
                true = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
                assert result == str(true) and str(true) in msgs[i + 3]["content"]
        assert assistant.count("<tool_call>") == sum(1 for m in msgs if m.get("tool_calls"))
        assert calls[-len(record_calls(r)) :] == record_calls(r) or not record_calls(r)
    # two questions under each tool list; the mix: some direct answers, single-tool lists, and full lists
    # in more than one order; a single-tool list asks for that tool every time
    assert set(turns) == {2}
    assert 20 < direct < 100
    full = [tuple(x) for x in listed if len(x) == 3]
    assert 60 < len(full) < len(listed) - 60 and len(set(full)) > 1
    assert all(c["name"] == n[0] for c, n in zip(calls, listed) if len(n) == 1)
    seen = {json.dumps(c, sort_keys=True) for c in calls}
    for kind in ("calc", "unit", "date"):
        held = tool_eval_questions(20, kind=kind)
        assert (
            len(held) == 20
            and not {json.dumps({"name": q["name"], "arguments": q["arguments"]}, sort_keys=True) for q in held} & seen
        )
        assert all(not run_tool(q["name"], q["arguments"]).startswith("error") for q in held)
    for q in tool_eval_questions(20):  # arithmetic: the true value, not the calculator's output
        a, op, b = q["arguments"]["expression"].split()
        assert q["answer"] == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_chat_executes_tool_calls():
    from sprout.infer.chat import ChatSession, run_chat
    from sprout.infer.generate import SamplingConfig
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(default_tokenizer_dir())
    call = (
        '<think>\n\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "6 * 7"}}\n</tool_call>'
    )
    replies = iter([call, "<think>\n\n</think>\n\nThe answer is 42."])
    prompts = []
    session = ChatSession(None, tok, SamplingConfig(max_new_tokens=60, temperature=0), tools=tool_specs(["calculator"]))
    # The model is scripted: each generation round returns the next canned reply (the prompt is recorded).
    session._generate = lambda ids: (prompts.append(tok.decode(ids)), iter([next(replies)]))[1]
    out = io.StringIO()
    inputs = iter(["What is 6 times 7?", "/quit"])
    run_chat(session, read=lambda _: next(inputs), out=out)
    text = out.getvalue()
    assert "[tool calculator" in text and "-> 42]" in text and "The answer is 42." in text
    roles = [m["role"] for m in session.history]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert session.history[2]["content"] == "42"
    assert session.history[1]["tool_calls"][0]["name"] == "calculator"
    assert "<tool_response>\n42\n</tool_response>" in prompts[1]  # the result was fed back to the model


def test_post_eval_argument_matching():
    from sprout.eval.skills import _same_args

    want = {"value": 30, "from_unit": "km", "to_unit": "mile"}
    assert _same_args({"value": 30.0, "from_unit": "km", "to_unit": "mile"}, want)
    assert _same_args({"expression": "91*927"}, {"expression": "91 * 927"})
    assert not _same_args({"value": 30, "from_unit": "mile", "to_unit": "km"}, want)
    assert not _same_args({"value": 30, "from_unit": "km"}, want)
    assert not _same_args("30 km", want)


def test_tools_eval_marks_each_question_for_pairing(monkeypatch):
    """`final_per_question` holds one mark per held-out question, in order, so two models' evaluations pair up:
    here a stand-in model answers the first and third question right and the second wrong."""
    from types import SimpleNamespace

    from sprout.data.builtin_sets import tool_eval_questions
    from sprout.eval import skills

    items = tool_eval_questions(3, kind="unit")
    replies = iter([0, 1, 0])  # 0: the right call and its result; 1: the right call, a wrong final number

    def fake_ask(model, tok, question, tools, max_new):
        it = next(i for i in items if i["question"] == question)
        result = run_tool(it["name"], it["arguments"])
        final = f"It is {result}." if next(replies) == 0 else "It is 12345678."
        call = {"name": it["name"], "arguments": it["arguments"]}
        history = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": result},
            {"role": "assistant", "content": final},
        ]
        return SimpleNamespace(history=history)

    monkeypatch.setattr(skills, "_ask", fake_ask)
    res = skills.tools_eval(None, None, n=3, offered="needed", kind="unit")
    assert res["final_per_question"] == "101"
    assert res["final_answer_correct"] == pytest.approx(2 / 3) and res["correct_arguments"] == 1.0
