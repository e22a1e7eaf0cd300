"""Scoring of `lav2 eval` on hand-made predictions with known results, the resumable runner, and bad inputs.

No model here: MME / ScienceQA breakdowns are checked against numbers worked out by hand, caption metrics against
pycocoevalcap's scorers called directly on the same inputs, the runner with a stand-in predictor.
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


def test_caption_metrics_equal_pycocoevalcap_python_tokenizer():
    metrics, info = caption_metrics.caption_scores(REFS, PREDS, "python", meteor=False)
    gts = {k: [caption_metrics.ptb_like_tokenize(c) for c in v] for k, v in REFS.items()}
    res = {k: [caption_metrics.ptb_like_tokenize(v)] for k, v in PREDS.items()}
    want = _direct(gts, res)
    assert metrics == pytest.approx(want, rel=0, abs=0)
    assert info["tokenizer"].startswith("python") and set(info["skipped_metrics"]) == {"METEOR", "SPICE"}
    assert metrics["CIDEr"] > 0 and 0 < metrics["BLEU_1"] <= 1


@pytest.mark.skipif(not JAVA, reason="the PTB tokenizer and METEOR need Java")
def test_caption_metrics_equal_pycocoevalcap_ptb_and_meteor():
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    meteor = Meteor()  # one METEOR JVM for both sides (it takes seconds to start)
    metrics, info = caption_metrics.caption_scores(REFS, PREDS, "auto", meteor_scorer=meteor)
    tok = PTBTokenizer()
    extra = {f"c{i}": [{"caption": c}] for i, c in enumerate(CAPTIONS)}  # tokenised in the same JVM run
    gts = tok.tokenize({**{k: [{"caption": c} for c in v] for k, v in REFS.items()}, **extra})
    res = tok.tokenize({k: [{"caption": v}] for k, v in PREDS.items()})
    want = _direct({k: gts[k] for k in REFS}, res, meteor)
    assert metrics == pytest.approx(want, rel=0, abs=0)
    assert info["tokenizer"].startswith("ptb") and "METEOR" not in info["skipped_metrics"]
    assert "SPICE" in metrics or "Stanford CoreNLP" in info["skipped_metrics"]["SPICE"]
    # The documented fallback gives the PTB tokenizer's tokens on these captions.
    assert [caption_metrics.ptb_like_tokenize(c) for c in CAPTIONS] == [gts[f"c{i}"][0] for i in range(len(CAPTIONS))]


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
