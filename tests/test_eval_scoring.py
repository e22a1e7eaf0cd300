"""Scoring of `lav2 eval` on hand-made predictions with known results, the resumable runner, and bad inputs.

No model here: MME / ScienceQA breakdowns are checked against numbers worked out by hand, caption metrics against
pycocoevalcap's scorers called directly on the tokens of pycocoevalcap's Java PTB tokenizer (which is also the
reference for our no-Java tokenizer), the runner with a stand-in predictor.
"""

import contextlib
import io
import json
import os

import numpy as np
import pytest

from lav2_jax.eval import caption, caption_metrics, mme, runner, scienceqa

from eval_helpers import write_coco, write_mme, write_scienceqa

JAVA = caption_metrics.java_available()


def _mme_rec(sub, image, q, answer, prediction):
    return {"id": f"{sub}/{image}/{q}", "subtask": sub, "image": image, "answer": answer, "prediction": prediction}


def test_mme_scores_by_hand():
    recs = [
        _mme_rec("existence", "a", 0, "yes", "Yes"), _mme_rec("existence", "a", 1, "no", "No, there is not."),
        _mme_rec("existence", "b", 0, "yes", "no"), _mme_rec("existence", "b", 1, "no", "No"),
        _mme_rec("count", "c", 0, "yes", "I think so"), _mme_rec("count", "c", 1, "no", "no"),
        _mme_rec("code_reasoning", "d", 0, "yes", "yes."), _mme_rec("code_reasoning", "d", 1, "no", "NO"),
        runner.skip_record("count/e/0", "missing image", "/x/e.jpg", subtask="count", image="e"),
    ]
    s = mme.score(recs, missing=["OCR"])
    assert s["subtasks"]["existence"] == {"acc": 0.75, "acc_plus": 0.5, "score": 125.0}
    assert s["subtasks"]["count"] == {"acc": 0.5, "acc_plus": 0.0, "score": 50.0}
    assert s["subtasks"]["code_reasoning"] == {"acc": 1.0, "acc_plus": 1.0, "score": 200.0}
    assert s["perception"] == 175.0 and s["cognition"] == 200.0
    assert s["counts"]["count"] == {"questions": 2, "images": 1, "other_answers": 1}
    assert s["skipped"] == {"total": 1, "by_reason": {"missing image": 1}} and s["missing_subtasks"] == ["OCR"]
    assert [mme.parse_answer(t) for t in ("Yes", " no ", "Yes, it is.", "Not really", "maybe", "The answer: yes")] \
        == ["yes", "no", "yes", "no", "other", "other"]


def _sqa_rec(i, subject, text, image, grade, answer, n_choices, prediction):
    return {"id": str(i), "subject": subject, "has_text": text, "has_image": image, "grade": grade, "answer": answer,
            "choices": [f"choice {j}" for j in range(n_choices)], "prediction": prediction}


def test_scienceqa_breakdowns_by_hand():
    recs = [
        _sqa_rec(1, "natural", True, False, "1-6", 0, 2, "The answer is (A)."),
        _sqa_rec(2, "social", False, True, "7-12", 1, 2, "A"),
        _sqa_rec(3, "language", False, False, "1-6", 1, 3, "(B)"),
        _sqa_rec(4, "natural", True, True, "7-12", 2, 3, "choice 2"),
        _sqa_rec(5, "social", False, False, "1-6", 0, 2, "E. none of these"),  # letter outside the choices: wrong
        runner.skip_record("6", "unreadable image: corrupt"),
    ]
    s = scienceqa.score(recs)
    assert s["accuracy"] == 3 / 5
    assert s["by_subject"] == {"natural": 1.0, "social": 0.0, "language": 1.0}
    assert s["by_context"] == {"text": 1.0, "image": 0.5, "none": 0.5}
    assert s["by_grade"] == {"1-6": 2 / 3, "7-12": 0.5}
    assert s["questions"] == 5 and s["unparsed"] == 1 and s["skipped"]["total"] == 1
    ch = ["a", "b", "c"]
    assert [scienceqa.parse_letter(t, ch) for t in ("B", "answer: C", "C) c", "A dog", "b", "D")] \
        == [1, 2, 2, None, 1, None]


CAPTIONS = ["A man riding a wave on top of a surfboard.", "The dog's ball isn't red, it's blue!",
            "Two black-and-white cats (on a sofa) at 3:30 p.m.", 'A "stop" sign -- next to 1,000 cars; costs $5...',
            "the players' jerseys: white/blue", "U.S. flag on a pole.", "They're eating pizza, aren't they?",
            "a [red] {car}", "A DOG, A CAT AND A BIRD.", "it is 5 o'clock."]
REFS = {1: ["A cat sits on a mat.", "The cat is sitting on the mat.", "a cat on a red mat"],
        2: ["A dog runs in the park.", "Dog running on the grass!", "a brown dog in a park"],
        3: ["Two people ride bikes down a street.", "People riding bicycles."]}
PREDS = {1: "A cat sitting on a mat.", 2: "A dog in the park.", 3: "Two men riding bikes on the road."}


def _direct(gts, res, meteor=None):
    """pycocoevalcap's scorers on already tokenised {id: [text]} dicts."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    out = {f"BLEU_{i + 1}": b for i, b in enumerate(bleu)}
    out["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    if meteor is not None:
        out["METEOR"] = meteor.compute_score(gts, res)[0]
    return out


# pycocoevalcap's PTBTokenizer (Java, Stanford CoreNLP 3.4.1) on CAPTIONS, recorded: the reference for the
# pure-Python tokenizer where Java is missing (with Java, `test_python_tokenizer_equals_java_ptb` rechecks it live).
PTB_CAPTIONS = ["a man riding a wave on top of a surfboard", "the dog 's ball is n't red it 's blue",
                "two black-and-white cats -lrb- on a sofa -rrb- at 3:30 p.m.",
                "a stop sign next to 1,000 cars costs $ 5",
                "the players jerseys white/blue", "u.s. flag on a pole", "they 're eating pizza are n't they",
                "a -lsb- red -rsb- -lcb- car -rcb-", "a dog a cat and a bird", "it is 5 o'clock"]
NEEDS_JAVA = pytest.mark.skipif(not JAVA, reason="pycocoevalcap's PTB tokenizer and METEOR need Java "
                                "(java not on PATH; Debian: apt-get install default-jre-headless)")


@pytest.fixture(scope="module")
def ptb():
    """pycocoevalcap's Java PTBTokenizer on REFS, PREDS and CAPTIONS in one JVM run: (gts, res, captions)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({**{("ref", k): [{"caption": c} for c in v] for k, v in REFS.items()},
                                   **{("pred", k): [{"caption": v}] for k, v in PREDS.items()},
                                   **{("cap", i): [{"caption": c}] for i, c in enumerate(CAPTIONS)}})
    return ({k: out[("ref", k)] for k in REFS}, {k: out[("pred", k)] for k in PREDS},
            [out[("cap", i)][0] for i in range(len(CAPTIONS))])


def _spice_reason():
    """What caption_scores must report for SPICE here: pycocoevalcap ships without the Stanford CoreNLP 3.6.0
    jars (it downloads them on first use, which this tool never does), so SPICE is skipped, saying where they go."""
    import pycocoevalcap

    lib = os.path.join(list(pycocoevalcap.__path__)[0], "spice", "lib")
    jars = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
    assert not any(os.path.exists(os.path.join(lib, j)) for j in jars), f"these tests expect no CoreNLP jars in {lib}"
    return (f"needs the Stanford CoreNLP 3.6.0 jars (stanford-corenlp-3.6.0.jar, stanford-corenlp-3.6.0-models.jar) "
            f"in {lib}; pycocoevalcap would download them, this tool does not (copy them there to enable SPICE)")


def test_python_tokenizer_gives_the_recorded_ptb_tokens():
    assert [caption_metrics.ptb_like_tokenize(c) for c in CAPTIONS] == PTB_CAPTIONS


@NEEDS_JAVA
def test_python_tokenizer_equals_java_ptb(ptb):
    gts, res, captions = ptb
    assert captions == PTB_CAPTIONS
    assert {k: [caption_metrics.ptb_like_tokenize(c) for c in v] for k, v in REFS.items()} == gts
    assert {k: [caption_metrics.ptb_like_tokenize(v)] for k, v in PREDS.items()} == res


@NEEDS_JAVA
def test_caption_metrics_python_tokenizer_equal_pycocoevalcap_on_ptb_tokens(ptb):
    gts, res, _ = ptb
    metrics, info = caption_metrics.caption_scores(REFS, PREDS, "python", meteor=False)
    assert metrics == pytest.approx(_direct(gts, res), rel=0, abs=0)
    assert info == {"tokenizer": caption_metrics.TOKENIZER_NAMES["python"],
                    "skipped_metrics": {"METEOR": "disabled (--no-meteor)", "SPICE": _spice_reason()}}
    assert metrics["CIDEr"] > 0 and 0 < metrics["BLEU_1"] <= 1


@NEEDS_JAVA
def test_caption_metrics_equal_pycocoevalcap_ptb_and_meteor(ptb):
    from pycocoevalcap.meteor.meteor import Meteor

    gts, res, _ = ptb
    meteor = Meteor()  # one METEOR JVM for both sides (it takes seconds to start)
    metrics, info = caption_metrics.caption_scores(REFS, PREDS, "auto", meteor_scorer=meteor)
    assert metrics == pytest.approx(_direct(gts, res, meteor), rel=0, abs=0)
    assert set(metrics) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert info == {"tokenizer": caption_metrics.TOKENIZER_NAMES["ptb"], "skipped_metrics": {"SPICE": _spice_reason()}}
    assert 0 < metrics["METEOR"] < 1


def test_prediction_log_resumes_after_a_torn_line(tmp_path):
    path = str(tmp_path / "out" / "predictions.jsonl")
    with runner.PredictionLog(path) as log:
        log.append_many([{"id": "a", "prediction": "x"}, {"id": "b", "prediction": "y"}])
        with pytest.raises(ValueError, match="already"):
            log.append({"id": "a", "prediction": "again"})
    with open(path, "a") as f:
        f.write('{"id": "c", "predic')  # a kill in the middle of a write
    with runner.PredictionLog(path) as log:
        assert list(log.records) == ["a", "b"] and log.dropped_partial
        log.append({"id": "c", "prediction": "z"})
    assert [json.loads(x)["id"] for x in open(path)] == ["a", "b", "c"]
    with open(path, "a") as f:
        f.write("not json\n")
    with pytest.raises(runner.EvalError, match=r"predictions.jsonl:4: not a JSON line"):
        runner.PredictionLog(path)
    runner.write_json(str(tmp_path / "out" / "summary.json"), {"b": 1.5})
    assert sorted(os.listdir(tmp_path / "out")) == ["predictions.jsonl", "summary.json"]


def test_run_items_batches_resumes_and_skips_bad_images(tmp_path):
    from lav2_jax.data.images import preprocess
    from lav2_jax.data.testing import write_image

    good = write_image(str(tmp_path / "good.png"), 20, 16)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    items = [runner.Item(f"q{i}", f"p{i}", image=[good, str(bad), str(tmp_path / "gone.jpg"), None][i % 4],
                         meta={"k": i}) for i in range(10)]
    calls = []

    def predict(prompts, images):
        calls.append(list(prompts))
        assert all(im is None or im.shape == (8, 8, 3) for im in images)
        return [p.upper() for p in prompts]

    def load(path):
        return preprocess(path, 8)

    log = runner.PredictionLog(str(tmp_path / "p.jsonl"))
    first = runner.run_items(items[:5], predict, log, load_image=load, batch_size=4, progress=False)
    log.close()
    assert calls == [["p0", "p3"], ["p4"]]
    log = runner.PredictionLog(str(tmp_path / "p.jsonl"))
    out = runner.run_items(items, predict, log, load_image=load, batch_size=4, progress=False)
    assert calls[2:] == [["p7"], ["p8"]]  # only what was missing; batches are the same fixed slices
    assert {k: out[k] for k in first} == first and list(out) == [it.id for it in items]
    assert out["q0"] == {"id": "q0", "prediction": "P0", "k": 0}
    assert out["q2"]["skipped"] == "missing image" and out["q1"]["skipped"].startswith("unreadable image")
    assert runner.skip_counts(out.values())["total"] == 5
    with pytest.raises(runner.EvalError, match="bad.png"):
        runner.run_items([runner.Item("z", "p", str(bad))], predict, log, load_image=load, strict=True,
                         progress=False)
    log.close()
    assert runner.limit_items(items, 3) == items[:3]
    table = runner.format_table([("acc", 0.5), ("score", 123.456), ("n", 3)])
    assert "0.5000" in table and "123.46" in table


def test_mme_layout_and_malformed_lines(tmp_path):
    root = write_mme(str(tmp_path / "MME"), {"artwork": 2, "existence": 2})
    with open(os.path.join(root, "existence", "1001.txt"), "a") as f:
        f.write("a line without a tab\n")
    items, bad, missing = mme.read_benchmark(root)
    assert [it.id for it in items][:2] == ["existence/1000/0", "existence/1000/1"] and len(items) == 8
    art = [it for it in items if it.id.startswith("artwork/1001")][0]
    assert art.image.endswith(os.path.join("artwork", "images", "1001.jpg"))
    assert art.meta["answer"] == "yes" and art.prompt.startswith("Below is an instruction")
    assert len(missing) == 12 and "OCR" in missing
    assert bad == [runner.skip_record("existence/1001/line3", mme.MALFORMED,
                                      os.path.join(root, "existence", "1001.txt") + ":3", subtask="existence",
                                      image="1001")]
    with pytest.raises(runner.EvalError, match=r"1001\.txt:3: malformed question line"):
        mme.read_benchmark(root, strict=True)
    with pytest.raises(runner.EvalError, match="MME root not found"):
        mme.read_benchmark(str(tmp_path / "nope"))


def test_scienceqa_and_caption_inputs(tmp_path):
    problems = write_scienceqa(str(tmp_path / "sqa"), 6)
    items, bad = scienceqa.read_benchmark(str(tmp_path / "sqa"), "test")
    assert [it.id for it in items] == list(problems) and not bad
    assert items[0].image.endswith(os.path.join("images", "test", "100", "image.png")) and items[1].image is None
    assert "### Input:\nContext: Some context 0." in items[0].prompt and "(A) choice 0 (B) choice 1" in items[0].prompt
    problems["101"]["answer"] = 7
    (tmp_path / "sqa" / "problems.json").write_text(json.dumps(problems))
    items, bad = scienceqa.read_benchmark(str(tmp_path / "sqa"), "test")
    assert len(items) == 5 and bad[0]["id"] == "101" and bad[0]["skipped"] == scienceqa.MALFORMED
    with pytest.raises(runner.EvalError, match="problem 101: \"answer\""):
        scienceqa.read_benchmark(str(tmp_path / "sqa"), "test", strict=True)
    with pytest.raises(runner.EvalError, match="no split 'val'"):
        scienceqa.read_benchmark(str(tmp_path / "sqa"), "val")

    ann, images, split = write_coco(str(tmp_path / "coco"), 3)
    items, refs = caption.read_benchmark(ann, images, split)
    assert [it.meta["image_id"] for it in items] == [391895, 391902] and len(refs[391895]) == 3
    assert items[0].prompt == caption.templates.caption_prompt()
    assert len(caption.read_benchmark(ann, images)[0]) == 3
    (tmp_path / "coco" / "broken.json").write_text('{"images": [\n  {"id": 1,\n  oops}')
    with pytest.raises(runner.EvalError, match=r"broken\.json:3: not JSON"):
        caption.read_benchmark(str(tmp_path / "coco" / "broken.json"), images)
    (tmp_path / "coco" / "bad.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}],
                                                            "annotations": [{"image_id": 1}]}))
    with pytest.raises(runner.EvalError, match=r"bad\.json: annotations\[0\]"):
        caption.read_benchmark(str(tmp_path / "coco" / "bad.json"), images)
    recs = [{"id": "2", "image_id": 2, "prediction": " b "}, {"id": "1", "image_id": 1, "prediction": "a"},
            runner.skip_record("3", "missing image")]
    assert caption.results(recs) == [{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}]
    assert np.isfinite(caption.score(recs, {1: ["a cat"], 2: ["b dog"]}, "python", meteor=False)["metrics"]["CIDEr"])
