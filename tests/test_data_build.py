"""Every source format built into a TFDS array_record dataset and read back through the grain pipeline.

Token ids, loss masks and image tensors are compared with expectations computed here from the original files
(templates + the tokenizer called directly, `images.preprocess` on the original image file).
"""

import io
import json
import os

import numpy as np
import pytest

from lav2_jax.core import templates
from lav2_jax.cli.main import main as lav2_main
from lav2_jax.data import builder, images
from lav2_jax.data.pipeline import Pipeline, PipelineConfig, open_source
from lav2_jax.data.testing import image_bytes, train_sentencepiece, write_image, write_jsonl

SIZE = 32


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lav2_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(train_sentencepiece(str(tmp_path_factory.mktemp("tok") / "tokenizer.model")))


def _eval_config(**kw):
    return PipelineConfig(**{**dict(batch_size=1, max_len=512, shuffle=False, num_epochs=1, train=False,
                                    image_size=SIZE, shard_index=0, shard_count=1), **kw})


def _read_all(path, tok, **kw):
    """(source `where` of each record in stored order, the batches of an unshuffled single epoch, batch 1)."""
    wheres = [r["source"].decode() for r in open_source(path)]
    return wheres, list(Pipeline(path, tok, _eval_config(**kw)))


def _expected(tok, segments):
    ids, mask = [tok.bos_id], [0.0]
    for k, (text, is_answer) in enumerate(segments):
        piece = tok.encode(text) if k == 0 else tok.encode_continuation(text)
        ids += piece
        mask += [float(is_answer)] * len(piece)
    ids.append(tok.eos_id)
    mask.append(1.0)
    return np.array(ids[:-1]), np.array(ids[1:]), np.array(mask[1:])


def _check_text(batch, tok, segments):
    tokens, targets, mask = _expected(tok, segments)
    n = len(tokens)
    assert batch["tokens"].shape[1] in (64, 128, 256, 512) and batch["tokens"].shape[1] >= n
    np.testing.assert_array_equal(batch["tokens"][0, :n], tokens)
    np.testing.assert_array_equal(batch["targets"][0, :n], targets)
    np.testing.assert_array_equal(batch["loss_mask"][0, :n], mask)
    assert not batch["tokens"][0, n:].any() and not batch["loss_mask"][0, n:].any()


def test_instruction_json_and_jsonl(tmp_path, tok):
    arr = [{"instruction": "Give a tip.", "input": "", "output": "Sleep well."},
           {"instruction": "Translate", "input": "Bonjour", "output": "Hello"}]
    (tmp_path / "a.json").write_text(json.dumps(arr, indent=2))
    write_jsonl(str(tmp_path / "b.jsonl"), [{"instruction": "Count", "output": "1 2 3"}])
    out = str(tmp_path / "ds")
    report = builder.build("instruction", [builder.Source("instruction", str(tmp_path / "a.json")),
                                           builder.Source("instruction", str(tmp_path / "b.jsonl"))],
                           out, progress=False)
    assert report.summary() == "3 kept, 0 skipped"
    originals = {f"{tmp_path}/a.json:2": arr[0], f"{tmp_path}/a.json:7": arr[1],
                 f"{tmp_path}/b.jsonl:1": {"instruction": "Count", "input": None, "output": "1 2 3"}}
    wheres, batches = _read_all(out, tok)
    assert sorted(wheres) == sorted(originals) and len(batches) == 3
    for where, batch in zip(wheres, batches):
        o = originals[where]
        _check_text(batch, tok, [(templates.alpaca(o["instruction"], o["input"]), False), (o["output"], True)])
        assert "images" not in batch and not batch["has_image"].any()
    assert json.load(open(os.path.join(out, "build_report.json")))["kept"] == 3


def test_conversation_llava_and_sharegpt(tmp_path, tok):
    write_image(str(tmp_path / "imgs" / "cat.png"), 50, 40, seed=1)
    data = [
        {"id": "llava-1", "image": "cat.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."},
            {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Grey."}]},
        {"id": "sharegpt-1", "conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "user", "value": "Hi"},
            {"from": "assistant", "value": "Hello"}, {"from": "human", "value": "unanswered"}]},
    ]
    src = tmp_path / "conv.json"
    src.write_text("[\n" + ",\n".join(json.dumps(d) for d in data) + "\n]\n")  # elements on lines 2 and 3
    out = str(tmp_path / "ds")
    report = builder.build("conversation", [builder.Source("conversation", str(src),
                                                           (("image_root", str(tmp_path / "imgs")),))],
                           out, progress=False)
    assert report.kept == 2 and not report.skipped
    wheres, batches = _read_all(out, tok)
    by_where = dict(zip(wheres, batches))
    llava = by_where[f"{src}:2"]
    _check_text(llava, tok, templates.chat_segments(
        [("human", "What is this?"), ("assistant", "A cat."), ("human", "Colour?"), ("assistant", "Grey.")]))
    assert "<image>" not in tok.decode(llava["tokens"][0])
    assert llava["has_image"].tolist() == [True]
    np.testing.assert_allclose(llava["images"][0], images.preprocess(str(tmp_path / "imgs" / "cat.png"), SIZE),
                               atol=1e-6)
    share = by_where[f"{src}:3"]
    _check_text(share, tok, templates.chat_segments([("human", "Hi"), ("assistant", "Hello")], "Be brief."))
    assert share["has_image"].tolist() == [False] and not share["images"].any()
    assert share["images"].shape == (1, SIZE, SIZE, 3) and share["images"].dtype == np.float32


def _check_caption(batch, tok, caption, image_path, channel_order="rgb"):
    _check_text(batch, tok, templates.caption_segments(caption))
    assert batch["has_image"].tolist() == [True]
    np.testing.assert_allclose(batch["images"][0], images.preprocess(image_path, SIZE, channel_order), atol=1e-6)


def test_caption_tsv(tmp_path, tok):
    write_image(str(tmp_path / "a.jpg"), 64, 48, seed=2, fmt="JPEG")
    write_image(str(tmp_path / "sub" / "b.png"), 40, 70, seed=3)
    (tmp_path / "pairs.tsv").write_text(
        "url\tcaption\na.jpg\tA red bus.\nfile://sub/b.png\tTwo people wait.\n")
    out = str(tmp_path / "ds")
    assert builder.build("caption", [builder.Source("tsv", str(tmp_path / "pairs.tsv"))], out,
                         progress=False).kept == 2
    wheres, batches = _read_all(out, tok, channel_order="bgr")
    expect = {f"{tmp_path}/pairs.tsv:2": ("A red bus.", tmp_path / "a.jpg"),
              f"{tmp_path}/pairs.tsv:3": ("Two people wait.", tmp_path / "sub" / "b.png")}
    for where, batch in zip(wheres, batches):
        caption, path = expect[where]
        _check_caption(batch, tok, caption, str(path), "bgr")
    # Training mode: augmented (random crop) images of the right shape, not the eval crop.
    train = next(iter(Pipeline(out, tok, _eval_config(train=True))))
    assert train["images"].shape == (1, SIZE, SIZE, 3) and np.isfinite(train["images"]).all()


def test_coco_with_karpathy_split(tmp_path, tok):
    names = {1: "COCO_1.jpg", 2: "COCO_2.jpg", 3: "COCO_3.jpg"}
    for i, n in names.items():
        write_image(str(tmp_path / "val2014" / n), 48, 36, seed=i, fmt="JPEG")
    ann = {"images": [{"id": i, "file_name": n} for i, n in names.items()],
           "annotations": [{"image_id": 1, "caption": "A dog."}, {"image_id": 1, "caption": "A brown dog."},
                           {"image_id": 2, "caption": "A cat."}, {"image_id": 3, "caption": "A bird."}]}
    split = {"images": [{"cocoid": 1, "split": "train", "filepath": "val2014", "filename": names[1]},
                        {"cocoid": 2, "split": "restval", "filepath": "val2014", "filename": names[2]},
                        {"cocoid": 3, "split": "test", "filepath": "val2014", "filename": names[3]}]}
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    (tmp_path / "dataset_coco.json").write_text(json.dumps(split))
    out = str(tmp_path / "ds")
    src = builder.Source("coco", str(tmp_path / "captions.json"),
                         (("image_root", str(tmp_path)), ("karpathy", str(tmp_path / "dataset_coco.json")),
                          ("splits", ("train", "restval"))))
    assert builder.build("caption", [src], out, progress=False).summary() == "2 kept, 0 skipped"
    records = {r["source"].decode(): [c.decode() for c in r["captions"]] for r in open_source(out)}
    assert records == {f"{tmp_path}/captions.json:image 1": ["A dog.", "A brown dog."],
                       f"{tmp_path}/captions.json:image 2": ["A cat."]}
    wheres, batches = _read_all(out, tok)
    for where, batch in zip(wheres, batches):
        image_id = int(where.rsplit(" ", 1)[1])
        _check_caption(batch, tok, records[where][0], str(tmp_path / "val2014" / names[image_id]))


def test_tfds_catalog_coco_captions_prepared_as_array_record(tmp_path, tok):
    """A fake of the prepared `coco_captions` catalog dataset, with the catalog's feature layout."""
    import tensorflow_datasets as tfds

    class CocoCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "coco_captions"
        VERSION = tfds.core.Version("1.1.0")
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"), "image/filename": tfds.features.Text(),
                "image/id": np.int64, "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64})}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(2), "val": self._generate_examples(1)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": io.BytesIO(image_bytes(40, 30, i, "JPEG")), "image/filename": f"{i}.jpg",
                          "image/id": i, "captions": [{"text": f"Caption {i}.", "id": 1}]}

    tfds.disable_progress_bar()
    CocoCaptions(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    out = str(tmp_path / "ds")
    rc = lav2_main(["data", "build", "--kind", "caption", "--src", "tfds:coco_captions", "--tfds-data-dir",
                    str(tmp_path / "tfds"), "--out", out, "--workers", "0", "--quiet"])
    assert rc == 0
    wheres, batches = _read_all(out, tok)
    assert len(batches) == 2
    for where, batch in zip(wheres, batches):
        i = int(where.rsplit(":", 1)[1])
        _check_text(batch, tok, templates.caption_segments(f"Caption {i}."))
        np.testing.assert_allclose(batch["images"][0], images.preprocess(image_bytes(40, 30, i, "JPEG"), SIZE),
                                   atol=1e-6)


@pytest.mark.multiprocess
def test_parallel_build_equals_serial(tmp_path):
    for i in range(4):
        write_image(str(tmp_path / f"{i}.png"), 30, 30, seed=i)
    (tmp_path / "p.tsv").write_text("path\tcaption\n" + "".join(f"{i}.png\tcap {i}\n" for i in range(4)))
    (tmp_path / "q.tsv").write_text("path\tcaption\n0.png\tother\nmissing.png\tgone\n")
    srcs = [builder.Source("tsv", str(tmp_path / "p.tsv")), builder.Source("tsv", str(tmp_path / "q.tsv"))]
    serial = builder.build("caption", srcs, str(tmp_path / "s"), workers=0, progress=False)
    parallel = builder.build("caption", srcs, str(tmp_path / "p"), workers=2, progress=False)
    assert serial.summary() == parallel.summary() == "5 kept, 1 skipped: missing image file → 1"
    assert [dict(r) for r in open_source(str(tmp_path / "s"))] == [dict(r) for r in open_source(str(tmp_path / "p"))]


def test_cli_build_prints_summary_and_refuses_to_overwrite(tmp_path, capsys):
    src = write_jsonl(str(tmp_path / "a.jsonl"), [{"instruction": "x", "output": "y"}, "{bad"])
    out = str(tmp_path / "ds")
    args = ["data", "build", "--kind", "instruction", "--src", src, "--out", out, "--workers", "0", "--quiet"]
    assert lav2_main(args) == 0
    assert "1 kept, 1 skipped: malformed JSON → 1" in capsys.readouterr().out
    assert lav2_main(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert lav2_main(args + ["--overwrite"]) == 0
    assert lav2_main(["data", "build", "--kind", "caption", "--src", str(tmp_path / "nothing.tsv"),
                      "--out", out]) == 2
    assert "nothing.tsv: no such file" in capsys.readouterr().err
