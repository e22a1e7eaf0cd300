"""Chat: the template of docs/design.md §3.3.2 over the history, oldest exchanges dropped to fit the context,
replies cut at "###" (streamed text never shows a partial separator)."""

import pytest

from generate_helpers import CharTokenizer, tiny_bundle
from lav2_jax.core import templates
from lav2_jax.inference import PromptTooLong
from lav2_jax.inference.chat import ChatSession
from lav2_jax.inference.streaming import TextStreamer


def session(notes, max_new_tokens=20):
    return ChatSession(tiny_bundle("release-lora-bias"), system="Sys", max_new_tokens=max_new_tokens,
                       temperature=0, on_notice=notes.append)


def test_prompt_is_the_chat_template_of_the_history():
    notes = []
    s = session(notes)
    s.turns = [("human", "hello"), ("assistant", "hi there")]
    assert s.prompt_for("how are you?") == templates.chat_prompt(
        [("human", "hello"), ("assistant", "hi there"), ("human", "how are you?")], "Sys")
    assert s.prompt_for("how are you?") == "Sys###Human: hello###Assistant: hi there###Human: how are you?###Assistant:"
    assert notes == []


def test_oldest_exchanges_dropped_with_a_notice():
    notes = []
    s = session(notes)  # context 128 tokens (one per character), 20 reserved for the reply
    old = [("human", "a" * 20), ("assistant", "b" * 20), ("human", "c" * 10), ("assistant", "d" * 10)]
    s.turns = list(old)
    prompt = s.prompt_for("e" * 15)  # the full history would need 125 + 20 > 128 tokens
    assert prompt == templates.chat_prompt([*old[2:], ("human", "e" * 15)], "Sys")
    assert s.turns == old[2:] and s.dropped == 1
    assert len(notes) == 1 and "dropped the oldest 1" in notes[0] and "128-token" in notes[0]
    with pytest.raises(PromptTooLong):
        s.prompt_for("f" * 130)


def test_text_streamer_stops_at_the_separator():
    tok = CharTokenizer()
    st = TextStreamer(tok, stop="###", lstrip=True)
    pieces = [st.push(t) for t in tok.encode(" hello #x ##y###rest")]
    assert "".join(pieces) == "hello #x ##y" and st.stopped
    st = TextStreamer(tok, stop="###")
    assert [st.push(t) for t in tok.encode("a#")] == ["a", ""]  # a lone "#" waits: it may start "###"
    assert st.push(tok.encode("b")[0]) == "#b" and st.finish() == ""
    st = TextStreamer(tok, stop="###")
    assert [st.push(t) for t in tok.encode("ok##")] == ["o", "k", "", ""] and st.finish() == "##"


def test_ask_records_the_reply():
    notes = []
    s = session(notes, max_new_tokens=12)
    reply = s.ask("hi")
    assert "###" not in reply and reply == reply.strip()
    assert s.turns == [("human", "hi"), ("assistant", reply)]
    second = "".join(s.ask_stream("and?"))
    assert s.turns[-1] == ("assistant", second.strip()) and len(s.turns) == 4
