"""A tokenizer with more pieces than the model's vocabulary is a one-line user error where tokenizer and model meet,
not a NaN loss or garbage text: `lav2 train` on pipeline data (LLaMA-Adapter V2, LLaVA and mPLUG-Owl configs; a
preset or a base checkpoint's vocab_size) and `lav2 generate` / `lav2 chat` loading a checkpoint. Ids >= vocab_size
would reach the embedding gather, which fills out-of-range rows with NaN (`lav2_jax.data.tokenizer.check_vocab`).
"""

import io
import os
import sys
import types

import pytest

from ckpt_utils import random_params, write_sentencepiece
from lav2_jax.core import presets
from lav2_jax.checkpoint import load_pretrained, save_pretrained
from lav2_jax.cli.main import main
from lav2_jax.data.testing import train_sentencepiece
from lav2_jax.data.tokenizer import VocabularyError, check_vocab
from lav2_jax.model.factory import build_model
from model_utils import TINY

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
BIG = 400  # pieces of the oversized tokenizer: more than the tiny preset's 256 and the checkpoint's 64


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A 400-piece tokenizer, a 64-piece one, and a tiny text model (vocab 64) saved with each."""
    root = tmp_path_factory.mktemp("vocab")
    big = train_sentencepiece(str(root / "big.model"), vocab_size=BIG)
    small = write_sentencepiece(str(root / "small" / "tokenizer.model"), vocab_size=64)
    model = build_model(TINY.replace(vocab_size=64), presets.get_adapter("none"))
    params = random_params(model)
    return {"big": big, "ok": save_pretrained(str(root / "ok"), model, params, tokenizer=small),
            "bad": save_pretrained(str(root / "bad"), model, params, tokenizer=big)}


def run_cli(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_rule():
    tok = lambda n: types.SimpleNamespace(vocab_size=n)  # noqa: E731
    check_vocab(tok(64), 64, "t", "m")
    check_vocab(tok(48), 64, "t", "m")  # padded vocabularies are fine
    check_vocab(tok(65), 64, "t", "m", image_token_id=64)  # an `<image>` added right after the vocabulary
    for n, image in ((65, None), (65, -1), (66, 64)):
        with pytest.raises(VocabularyError, match=f"the tokenizer t has {n} pieces but the model's vocab_size is 64"):
            check_vocab(tok(n), 64, "t", "m", image_token_id=image)


@pytest.mark.parametrize("config", ["tiny_joint.py", "tiny_llava.py", "tiny_owl.py"])
def test_train_refuses_a_bigger_tokenizer(env, capsys, tmp_path, config):
    """Before any weight, data or checkpoint: the error names the tokenizer field and the model's preset."""
    rc, _, err = run_cli(capsys, "train", "--config", os.path.join(CONFIGS, config), "--workdir", str(tmp_path / "w"),
                         "--config.data.source=pipeline", f"--config.data.tokenizer={env['big']}")
    assert rc == 2 and one_line(err), err
    assert (f"config.data.tokenizer={env['big']} has {BIG} pieces but the model's vocab_size is 256 "
            "(config.model.preset='tiny')") in err, err
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_train_names_the_base_checkpoint(env, capsys, tmp_path):
    rc, _, err = run_cli(capsys, "train", "--config", os.path.join(CONFIGS, "tiny_joint.py"), "--workdir",
                         str(tmp_path / "w"), "--config.data.source=pipeline", f"--config.data.tokenizer={env['big']}",
                         f"--config.model.base_checkpoint={env['ok']}")
    assert rc == 2 and one_line(err), err
    assert (f"has {BIG} pieces but the model's vocab_size is 64 (model.vocab_size in {env['ok']}/config.json, "
            "config.model.base_checkpoint)") in err, err


def test_generate_and_chat_refuse_a_checkpoint_with_a_bigger_tokenizer(env, capsys, monkeypatch):
    assert load_pretrained(env["ok"]).tokenizer.vocab_size == 64  # a fitting tokenizer loads
    with pytest.raises(VocabularyError):
        load_pretrained(env["bad"])
    want = (f"the tokenizer at {env['bad']}/tokenizer has {BIG} pieces but the model's vocab_size is 64 "
            f"(model.vocab_size in {env['bad']}/config.json)")
    rc, out, err = run_cli(capsys, "generate", "--ckpt", env["bad"], "--prompt", "the cat", "--max-new-tokens", "2")
    assert rc == 2 and out == "" and one_line(err) and want in err, err
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    rc, out, err = run_cli(capsys, "chat", "--ckpt", env["bad"])
    assert rc == 2 and out == "" and one_line(err) and want in err, err


@pytest.mark.parametrize("make", ["missing", "not_a_model"])
def test_train_names_an_unreadable_tokenizer(capsys, tmp_path, make):
    """A missing or corrupt `config.data.tokenizer` is one line naming the field and the path, not a traceback."""
    path = tmp_path / "tok.model"
    if make == "not_a_model":
        path.write_bytes(b"not a sentencepiece model")
    rc, _, err = run_cli(capsys, "train", "--config", os.path.join(CONFIGS, "tiny_joint.py"), "--workdir",
                         str(tmp_path / "w"), "--config.data.source=pipeline", f"--config.data.tokenizer={path}")
    assert rc == 2 and one_line(err), err
    assert f"config.data.tokenizer: {path}: " in err, err
    assert not (tmp_path / "w" / "checkpoints").exists()
