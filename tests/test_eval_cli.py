"""`lav2 eval caption|mme|scienceqa|loss` end to end on a tiny checkpoint and tiny datasets in the released layouts.

Predictions are compared with `lav2_jax.inference.generate` called directly; a run killed with SIGKILL part-way and
rerun ends with the summary of an uninterrupted run, every prediction present once.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ckpt_utils import write_sentencepiece
from eval_helpers import write_coco, write_mme, write_scienceqa
from generate_helpers import tiny_bundle
from lav2_jax.checkpoint import load_pretrained, save_pretrained
from lav2_jax.cli.main import main
from lav2_jax.eval import caption, caption_metrics, mme, runner, scienceqa
from lav2_jax.inference import generate
from lav2_jax.inference.experts import load_for_model
from model_utils import TINY

CFG = TINY.replace(vocab_size=64, max_seq_len=512)
QUIET = ("--no-progress",)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_ckpt")
    sp = write_sentencepiece(str(root / "tok" / "tokenizer.model"), vocab_size=64)
    b = tiny_bundle("release-bias", vision=True, config=CFG)
    return save_pretrained(str(root / "vision"), b.model, b.params, tokenizer=sp)


@pytest.fixture(scope="module")
def bundle(ckpt):
    return load_pretrained(ckpt)


def run_cli(capsys, *argv):
    rc = main(["eval", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _direct(bundle, records, max_new):
    """generate() on each scored record's prompt and image, one call per record (as --batch-size 1 does)."""
    out = {}
    for r in records:
        pixels = load_for_model(bundle, r["_image"]) if r["_image"] else None
        out[r["id"]] = generate(bundle, [r["_prompt"]], None if pixels is None else [pixels],
                                max_new_tokens=max_new, temperature=0).texts[0]
    return out


@pytest.fixture(scope="module")
def mme_root(tmp_path_factory):
    root = write_mme(str(tmp_path_factory.mktemp("mme") / "MME"), {"existence": 6, "artwork": 5, "code_reasoning": 3})
    os.remove(os.path.join(root, "existence", "1001.jpg"))  # missing image
    with open(os.path.join(root, "artwork", "images", "1002.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # corrupt image
    with open(os.path.join(root, "code_reasoning", "1000.txt"), "a") as f:
        f.write("Is this code valid? Yes\n")  # malformed line: no tab
    return root


MME_ARGS = ("--batch-size", "1", "--max-new-tokens", "3")


@pytest.fixture(scope="module")
def mme_clean(ckpt, mme_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mme_out"))
    rc = main(["eval", "mme", "--ckpt", ckpt, "--root", mme_root, "--out", out, *MME_ARGS, *QUIET])
    assert rc == 0
    return out


def test_mme_end_to_end(ckpt, bundle, mme_root, mme_clean, capsys):
    recs = read_jsonl(os.path.join(mme_clean, "predictions.jsonl"))
    items, bad, missing = mme.read_benchmark(mme_root)
    assert sorted(r["id"] for r in recs) == sorted([it.id for it in items] + [b["id"] for b in bad])
    skipped = {r["id"]: r for r in recs if "skipped" in r}
    corrupt = "unreadable image: not a readable image (corrupt or unknown format)"  # PIL cannot identify it
    assert {k: v["skipped"] for k, v in skipped.items()} == {
        "existence/1001/0": "missing image", "existence/1001/1": "missing image",
        "artwork/1002/0": corrupt, "artwork/1002/1": corrupt, "code_reasoning/1000/line3": "malformed question line"}
    assert skipped["code_reasoning/1000/line3"]["file"].endswith("1000.txt:3")
    by_id = {it.id: it for it in items}
    scored = [dict(r, _prompt=by_id[r["id"]].prompt, _image=by_id[r["id"]].image) for r in recs
              if "skipped" not in r]
    assert len(scored) == 2 * (6 + 5 + 3) - 4
    want = _direct(bundle, scored[:6], 3)
    assert {r["id"]: r["prediction"] for r in scored[:6]} == want
    summary = json.load(open(os.path.join(mme_clean, "summary.json")))
    assert summary == json.loads(json.dumps(mme.score(recs, missing)))
    assert set(summary["subtasks"]) == {"existence", "artwork", "code_reasoning"}
    assert set(summary["subtasks"]["existence"]) == {"acc", "acc_plus", "score"}
    assert summary["skipped"]["total"] == 5 and len(summary["missing_subtasks"]) == 11
    assert summary["perception"] == pytest.approx(summary["subtasks"]["existence"]["score"]
                                                  + summary["subtasks"]["artwork"]["score"])
    # --strict stops at the first bad input and names it; an absent root is one clear line.
    rc, _, err = run_cli(capsys, "mme", "--ckpt", ckpt, "--root", mme_root, "--out",
                         mme_clean + "_strict", "--strict", *MME_ARGS, *QUIET)
    assert rc == 2 and "1000.txt:3: malformed question line" in err
    rc, _, err = run_cli(capsys, "mme", "--ckpt", ckpt, "--root", mme_root + "_nope", "--out",
                         mme_clean + "_x", *QUIET)
    assert rc == 2 and "MME root not found" in err and "Traceback" not in err


def test_sigkill_then_rerun_gives_the_same_summary(ckpt, mme_root, mme_clean, tmp_path, capsys):
    out = str(tmp_path / "killed")
    preds = os.path.join(out, "predictions.jsonl")
    cmd = [sys.executable, "-m", "lav2_jax.cli.main", "eval", "mme", "--ckpt", ckpt, "--root", mme_root, "--out", out,
           *MME_ARGS, *QUIET]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = len(read_jsonl(os.path.join(mme_clean, "predictions.jsonl")))
    seen, deadline = 0, time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(preds):
                with open(preds, "rb") as f:
                    seen = f.read().count(b"\n")
                if seen >= 3:
                    break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the evaluation ended before it could be killed"
    with open(preds, "rb") as f:  # complete lines only: the kill may have cut the last one short
        partial = [json.loads(line) for line in f.read().split(b"\n")[:-1]]
    assert 3 <= len(partial) < total
    rc, table, _ = run_cli(capsys, "mme", "--ckpt", ckpt, "--root", mme_root, "--out", out, *MME_ARGS, *QUIET)
    assert rc == 0 and "perception" in table
    again = read_jsonl(preds)
    ids = [r["id"] for r in again]
    assert len(ids) == len(set(ids)) == total and again[:len(partial)] == partial
    clean = {r["id"]: r for r in read_jsonl(os.path.join(mme_clean, "predictions.jsonl"))}
    assert {r["id"]: r for r in again} == clean
    assert json.load(open(os.path.join(out, "summary.json"))) == json.load(open(os.path.join(mme_clean,
                                                                                             "summary.json")))


def test_scienceqa_end_to_end(ckpt, bundle, tmp_path, capsys):
    root = str(tmp_path / "sqa")
    write_scienceqa(root, 7)
    with open(os.path.join(root, "images", "test", "104", "image.png"), "wb") as f:
        f.write(b"not an image")
    out = str(tmp_path / "out")
    rc, table, err = run_cli(capsys, "scienceqa", "--ckpt", ckpt, "--root", root, "--split", "test", "--out", out,
                             "--limit", "6", "--batch-size", "8", "--max-new-tokens", "4", *QUIET)
    assert rc == 0, err
    recs = read_jsonl(os.path.join(out, "predictions.jsonl"))
    assert [r["id"] for r in recs] == [str(100 + i) for i in range(6)]  # --limit: the first 6 of the split
    assert recs[4]["skipped"].startswith("unreadable image")
    items = {it.id: it for it in scienceqa.read_benchmark(root, "test")[0]}
    scored = [r for r in recs if "skipped" not in r]
    prompts = [items[r["id"]].prompt for r in scored]
    pixels = [load_for_model(bundle, items[r["id"]].image) if items[r["id"]].image else None for r in scored]
    want = generate(bundle, prompts, pixels, max_new_tokens=4, temperature=0).texts  # one batch, as the run
    assert [r["prediction"] for r in scored] == want
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary == json.loads(json.dumps(scienceqa.score(recs)))
    assert set(summary) >= {"accuracy", "by_subject", "by_context", "by_grade"} and summary["skipped"]["total"] == 1
    assert "subject natural" in table and "context image" in table and "grade 7-12" in table


def test_caption_end_to_end_and_bad_inputs(ckpt, bundle, tmp_path, capsys):
    ann, images, split = write_coco(str(tmp_path / "coco"), 4)
    out = str(tmp_path / "out")
    rc, table, err = run_cli(capsys, "caption", "--ckpt", ckpt, "--ann", ann, "--images", images, "--split", split,
                             "--out", out, "--tokenizer", "python", "--no-meteor", "--max-new-tokens", "5", *QUIET)
    assert rc == 0, err
    results = json.load(open(os.path.join(out, "captions_results.json")))
    items, refs = caption.read_benchmark(ann, images, split)
    assert [r["image_id"] for r in results] == sorted(it.meta["image_id"] for it in items) and len(results) == 3
    pixels = [load_for_model(bundle, it.image) for it in items]
    want = generate(bundle, [it.prompt for it in items], pixels, max_new_tokens=5, temperature=0).texts
    assert {r["image_id"]: r["caption"] for r in results} == {it.meta["image_id"]: w.strip()
                                                              for it, w in zip(items, want)}
    summary = json.load(open(os.path.join(out, "summary.json")))
    metrics, info = caption_metrics.caption_scores(refs, {r["image_id"]: r["caption"] for r in results}, "python",
                                                   meteor=False)
    assert summary["metrics"] == metrics and summary["tokenizer"] == info["tokenizer"]
    assert summary["tokenizer"].startswith("python") and "METEOR" in summary["skipped_metrics"]
    assert "CIDEr" in table and "tokenizer" in table and "SPICE skipped" in table
    # A corrupt image: counted without --strict, named with it; an annotation file that is not JSON: file and line.
    name = os.path.join(images, os.listdir(images)[0])
    with open(name, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated jpeg")
    args = ("--ckpt", ckpt, "--ann", ann, "--images", images, "--tokenizer", "python", "--no-meteor",
            "--max-new-tokens", "2", *QUIET)
    rc, _, err = run_cli(capsys, "caption", *args, "--out", str(tmp_path / "strict"), "--strict")
    assert rc == 2 and name in err
    rc, _, err = run_cli(capsys, "caption", *args, "--out", str(tmp_path / "lenient"), "--limit", "2")
    summary = json.load(open(tmp_path / "lenient" / "summary.json"))
    assert rc == 0 and summary["images"] == 1 and summary["skipped"]["total"] == 1
    with open(ann, "w") as f:
        f.write('{"images": [],\n "annotations": [\n}')
    rc, _, err = run_cli(capsys, "caption", *args, "--out", str(tmp_path / "bad"))
    assert rc == 2 and f"{ann}:3: not JSON" in err


def cli_loss(capsys, ckpt: str, ds: str, out: str, max_len: int) -> tuple[dict, str]:
    """`lav2 eval loss` of `ckpt` on dataset `ds` as stream `held`, batches of 2: (its summary entry, the table)."""
    rc, table, err = run_cli(capsys, "loss", "--ckpt", ckpt, "--data", f"held={ds}", "--out", out, "--batch-size", "2",
                             "--max-len", str(max_len), *QUIET)
    assert rc == 0, err
    return json.load(open(os.path.join(out, "summary.json")))["streams"]["held"], table


def reference_loss(bundle, ds, cfg, with_images: bool = False) -> tuple[float, float, list]:
    """(Σ masked token losses, Σ loss mask, the batches) of `ds` read by the pipeline `cfg`: full logits of the
    batches, cross-entropy by hand in numpy."""
    from lav2_jax.data.pipeline import Pipeline

    forward = jax.jit(lambda p, t, i, h: bundle.model.apply({"params": p}, t, i, h))
    total, count, batches = 0.0, 0.0, []
    for batch in Pipeline(ds, bundle.tokenizer, cfg):
        images = (batch["images"], batch["has_image"]) if with_images else (None, None)
        logits = np.asarray(forward(bundle.params, batch["tokens"], *images), np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
        total += float((nll * batch["loss_mask"]).sum())
        count += float(batch["loss_mask"].sum())
        batches.append(batch)
    return total, count, batches


def test_loss_per_stream(ckpt, bundle, tmp_path, capsys):
    from lav2_jax.data import builder
    from lav2_jax.data.pipeline import PipelineConfig
    from lav2_jax.data.testing import write_jsonl

    src = write_jsonl(str(tmp_path / "alpaca.jsonl"), [
        {"instruction": f"Say the word {w}.", "input": "", "output": f"the {w}"} for w in ("cat", "dog", "mat",
                                                                                            "red ball", "park")])
    ds = str(tmp_path / "ds")
    builder.build("instruction", [builder.Source("instruction", src)], ds, progress=False)
    out = str(tmp_path / "out")
    s, table = cli_loss(capsys, ckpt, ds, out, 128)
    cfg = PipelineConfig(batch_size=2, max_len=128, shuffle=False, num_epochs=1, train=False, shard_index=0,
                         shard_count=1, drop_remainder=False)
    total, count, _ = reference_loss(bundle, ds, cfg)
    assert s["tokens"] == count and s["rows"] == 5 and s["batches"] == 3
    np.testing.assert_allclose(s["loss"], total / count, rtol=1e-5)
    np.testing.assert_allclose(s["perplexity"], np.exp(total / count), rtol=1e-5)
    assert "held loss" in table and "held perplexity" in table
    rc, _, err = run_cli(capsys, "loss", "--ckpt", ckpt, "--data", str(tmp_path / "none"), "--out", out + "2", *QUIET)
    assert rc == 2 and "dataset not found" in err


def test_loss_of_a_llava_checkpoint_reads_its_template(ckpt, tmp_path, capsys):
    """A LLaVA checkpoint's held-out loss reads its data as a LLaVA run trains on it (`System.data_template`:
    conversations with vicuna_v1, captions with plain; the splice's image tokens and `pad` aspect), not with
    LLaMA-Adapter V2's templates: the summary equals the loss of the LLaVA training pipeline's batches."""
    from ckpt_utils import random_params
    from lav2_jax.core import presets
    from lav2_jax.core.config import SpliceConfig
    from lav2_jax.data import builder
    from lav2_jax.data.pipeline import PipelineConfig
    from lav2_jax.data.testing import write_image
    from lav2_jax.eval.loss import system_fields
    from lav2_jax.model.factory import build_model

    # the placeholder id past the tokenizer's 64 pieces, inside the model's vocabulary (as LLaVA-1.5's 32000 < 32064)
    splice = SpliceConfig(image_token_id=CFG.vocab_size, n_tokens=16, image_aspect_ratio="pad")
    adapter = presets.get_adapter("none").replace(splice=splice)
    model = build_model(CFG.replace(vocab_size=CFG.vocab_size + 1), adapter,
                        presets.get_vision("tiny").replace(output_dim=0))
    params = random_params(model)
    llava = save_pretrained(str(tmp_path / "llava"), model, params, tokenizer=f"{ckpt}/tokenizer")
    assert system_fields(adapter, "caption")["template"] == "plain"
    rows = []
    for i, (q, a) in enumerate([("What is it?", "a cat"), ("Which colour?", "red"), ("Where?", "on the mat")]):
        write_image(str(tmp_path / "img" / f"{i}.png"), 40, 30, seed=i)
        rows.append({"image": f"{i}.png", "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                             {"from": "gpt", "value": a}]})
    rows.append({"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]})
    (tmp_path / "conv.json").write_text(json.dumps(rows))
    ds = str(tmp_path / "ds")
    builder.build("conversation", [builder.Source("conversation", str(tmp_path / "conv.json"),
                                                  (("image_root", str(tmp_path / "img")),))], ds, progress=False)
    s, _ = cli_loss(capsys, llava, ds, str(tmp_path / "out"), 512)
    cfg = PipelineConfig(batch_size=2, max_len=512, shuffle=False, num_epochs=1, train=False, image_size=32,
                         shard_index=0, shard_count=1, drop_remainder=False, system="llava", template="vicuna_v1",
                         image_tokens=16, image_token_id=CFG.vocab_size, image_aspect="pad", augment=False)
    total, count, batches = reference_loss(load_pretrained(llava), ds, cfg, with_images=True)
    images = sum(int((b["tokens"] == CFG.vocab_size).sum()) // 16 for b in batches)
    assert images == 3 and s["rows"] == 4 and s["tokens"] == count
    np.testing.assert_allclose(s["loss"], total / count, rtol=1e-5)
