"""Every bad-input case of the data builder gives its counted reason; `--strict` stops at the first with file and
line."""

import json
import os

import pytest

from lav2_jax.cli.main import main as lav2_main
from lav2_jax.data import builder, sources
from lav2_jax.data.testing import image_bytes, train_sentencepiece, write_image, write_jsonl


def _instruction_file(tmp_path):
    return write_jsonl(str(tmp_path / "inst.jsonl"), [
        {"instruction": "ok", "output": "fine"},                       # 1 kept
        "{not json",                                                   # 2 malformed JSON
        {"output": "no instruction"},                                  # 3 missing field
        {"instruction": ["list"], "output": "x"},                      # 4 non-string field
        {"instruction": "x", "output": "   "},                         # 5 empty answer
        '["not", "an", "object"]',                                     # 6 not an object
        {"instruction": "long " * 400, "output": "y"},                  # 7 too long (with tokenizer)
    ])


def test_instruction_reasons_counted(tmp_path):
    src = _instruction_file(tmp_path)
    tok = train_sentencepiece(str(tmp_path / "tok.model"))
    report = builder.build("instruction", [builder.Source("instruction", src)], str(tmp_path / "out"),
                           tokenizer=tok, max_len=64, progress=False)
    assert report.kept == 1
    assert dict(report.skipped) == {
        sources.R_JSON: 1, "missing field 'instruction'": 1, "non-string field 'instruction'": 1,
        sources.R_EMPTY_ANSWER: 1, sources.R_NOT_OBJECT: 1, sources.R_TOO_LONG: 1}
    assert report.examples["missing field 'instruction'"] == [f"{src}:3"]
    assert report.summary().startswith("1 kept, 6 skipped: ")


def test_json_array_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "output": }\n]\n')
    items = list(sources.instruction_records(str(path)))
    assert items[0] == (f"{path}:2", {"instruction": "a", "input": "", "output": "b"})
    assert items[1][0] == f"{path}:3" and items[1][1].reason == sources.R_JSON


def test_conversation_reasons_counted(tmp_path):
    write_image(str(tmp_path / "ok.png"), 20, 20)
    (tmp_path / "corrupt.png").write_bytes(image_bytes(20, 20)[:60])
    turn = lambda r, v: {"from": r, "value": v}  # noqa: E731
    write_jsonl(str(tmp_path / "conv.jsonl"), [
        {"conversations": [turn("human", "<image>\nhi"), turn("gpt", "yo")], "image": "ok.png"},   # kept
        {"conversations": [turn("human", "hi"), turn("robot", "beep")]},                           # unknown role
        {"conversations": [turn("human", "hi"), turn("gpt", "")]},                                 # empty answer
        {"conversations": [turn("gpt", "first"), turn("human", "hi")]},                            # order
        {"conversations": [turn("human", "hi"), turn("gpt", "yo")], "image": "missing.png"},       # missing file
        {"conversations": [turn("human", "hi"), turn("gpt", "yo")], "image": "corrupt.png"},       # corrupt image
        {"conversations": [turn("human", "only a question")]},                                     # no assistant
        {"conversations": [{"from": "human", "value": 3}, turn("gpt", "x")]},                     # non-string
        {"id": 1},                                                                                 # missing field
    ])
    report = builder.build("conversation", [builder.Source("conversation", str(tmp_path / "conv.jsonl"))],
                           str(tmp_path / "out"), progress=False)
    assert report.kept == 1
    assert dict(report.skipped) == {
        "unknown role 'robot'": 1, sources.R_EMPTY_ANSWER: 1, sources.R_ORDER: 1, sources.R_MISSING_IMAGE: 1,
        sources.R_BAD_IMAGE: 1, sources.R_NO_ASSISTANT: 1, "non-string field 'value'": 1,
        "missing field 'conversations'": 1}
    assert "corrupt.png" in report.examples[sources.R_BAD_IMAGE][0]


def test_caption_reasons_counted(tmp_path):
    write_image(str(tmp_path / "ok.jpg"), 20, 20, fmt="JPEG")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "pairs.tsv").write_text(
        "url\tcaption\n"
        "ok.jpg\tA dog.\n"
        "missing.jpg\tA cat.\n"
        "empty.jpg\tA zero-byte file.\n"
        "https://example.com/x.jpg\tRemote.\n"
        "ok.jpg\t\n"
        "ok.jpg\ttoo\tmany\n")
    report = builder.build("caption", [builder.Source("tsv", str(tmp_path / "pairs.tsv"))], str(tmp_path / "out"),
                           progress=False)
    assert report.kept == 1
    assert dict(report.skipped) == {sources.R_MISSING_IMAGE: 1, sources.R_BAD_IMAGE: 1, sources.R_REMOTE: 1,
                                    sources.R_EMPTY_ANSWER: 1, sources.R_TSV_ROW: 1}


def test_strict_stops_at_first_bad_record_with_file_and_line(tmp_path, capsys):
    src = _instruction_file(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(builder.StrictError, match=f"{src}:2: malformed JSON"):
        builder.build("instruction", [builder.Source("instruction", src)], str(out), strict=True, progress=False)
    assert not out.exists() and os.listdir(tmp_path) == ["inst.jsonl"]  # nothing half-written left behind
    rc = lav2_main(["data", "build", "--kind", "instruction", "--src", src, "--out", str(out), "--strict",
                    "--workers", "0", "--quiet"])
    assert rc == 2
    assert f"--strict: {src}:2: malformed JSON" in capsys.readouterr().err


def test_cli_summary_lists_reasons(tmp_path, capsys):
    src = _instruction_file(tmp_path)
    rc = lav2_main(["data", "build", "--kind", "instruction", "--src", src, "--out", str(tmp_path / "o"),
                    "--workers", "0", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 kept, 5 skipped: " in out and "malformed JSON → 1" in out and "empty answer → 1" in out
    report = json.load(open(tmp_path / "o" / "build_report.json"))
    assert report["kept"] == 2 and sum(report["skipped"].values()) == 5


def test_whole_file_problems_are_user_errors(tmp_path, capsys):
    (tmp_path / "noheader.tsv").write_text("a.jpg\tcaption without header\n")
    rc = lav2_main(["data", "build", "--kind", "caption", "--src", str(tmp_path / "noheader.tsv"),
                    "--out", str(tmp_path / "o"), "--workers", "0", "--quiet"])
    assert rc == 2 and "noheader.tsv: header" in capsys.readouterr().err
    (tmp_path / "coco.json").write_text('{"images": []}')
    rc = lav2_main(["data", "build", "--kind", "caption", "--src", str(tmp_path / "coco.json"), "--image-root",
                    str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0", "--quiet"])
    assert rc == 2 and "coco.json: missing key 'annotations'" in capsys.readouterr().err
