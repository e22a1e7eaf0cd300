"""Hostile input to `lav2 generate` (empty prompt, over-long prompt, max_new_tokens beyond the context, non-UTF-8
bytes, a 10,000² image) and damaged checkpoints: one clear line on stderr, or a documented truncation."""

import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from ckpt_utils import write_sentencepiece
from generate_helpers import tiny_bundle
from lav2_jax.checkpoint import load_pretrained, save_pretrained
from lav2_jax.cli.main import main
from model_utils import TINY

pytestmark = pytest.mark.faults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = TINY.replace(vocab_size=64, max_seq_len=48)  # a short context: easy to overrun


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    sp = write_sentencepiece(str(root / "tok" / "tokenizer.model"), vocab_size=64)
    b = tiny_bundle("release-bias", vision=True, config=CFG)
    path = save_pretrained(str(root / "vision"), b.model, b.params, tokenizer=sp)
    Image.new("L", (10_000, 10_000)).save(root / "huge.png")
    (root / "bad.jsonl").write_bytes(b'{"prompt": "hi"}\n{"prompt": "caf\xff"}\n')
    return {"ckpt": path, "root": str(root)}


def one_line_error(capsys, *argv):
    rc = main(["generate", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (rc, err)
    return err


@pytest.mark.parametrize("case, argv, message", [
    ("empty prompt", ["--prompt", "", "--raw"], "the prompt is empty"),
    ("blank templated prompt", ["--prompt", "   "], "the prompt is empty"),
    ("prompt longer than the context", ["--raw", "--prompt", "the cat sat " * 40], "context"),
    ("non-UTF-8 bytes (argv decodes them to surrogates)", ["--raw", "--prompt", "caf\udcff"], "not valid UTF-8"),
    ("non-UTF-8 batch file line", ["--batch-file", "{root}/bad.jsonl"], "bad.jsonl:2: not UTF-8"),
    ("huge image", ["--prompt", "x", "--image", "{root}/huge.png"], "image too large"),
])
def test_hostile_generation_input_is_one_clear_line(ckpt, capsys, case, argv, message):
    argv = [a.format(**ckpt) for a in argv]
    assert message in one_line_error(capsys, "--ckpt", ckpt["ckpt"], *argv, "--max-new-tokens", "2"), case


def test_max_new_tokens_beyond_the_context_is_truncated_to_it(ckpt):
    """Documented truncation (`--max-new-tokens` help, `inference.generation`): len(prompt) + new <= max_seq_len."""
    from lav2_jax.inference import generate

    bundle = load_pretrained(ckpt["ckpt"])
    prompt_ids = bundle.tokenizer.encode("the cat sat", bos=True)
    out = generate(bundle, "the cat sat", max_new_tokens=10 ** 6, temperature=0.0)
    assert 0 < len(out.token_ids[0]) <= CFG.max_seq_len - len(prompt_ids)


def damaged_copy(ckpt, tmp_path, how: str) -> str:
    path = str(tmp_path / "damaged")
    shutil.copytree(ckpt["ckpt"], path)
    if how == "truncate base":
        arrays = os.path.join(path, "base", "ocdbt.process_0", "d")
        for f in os.listdir(arrays):
            full = os.path.join(arrays, f)
            os.truncate(full, min(os.path.getsize(full), 100))
    elif how == "delete adapter file":
        arrays = os.path.join(path, "adapter", "ocdbt.process_0", "d")
        os.remove(os.path.join(arrays, max(os.listdir(arrays), key=lambda f: os.path.getsize(os.path.join(arrays, f)))))
    elif how == "delete adapter metadata":
        os.remove(os.path.join(path, "adapter", "_METADATA"))
    return path


def test_truncated_checkpoint_cli_stderr_is_one_named_line(ckpt, tmp_path):
    """The whole stderr of a `lav2 generate` subprocess: one line naming directory, item and array; no traceback,
    no asyncio `Exception ignored` / `never retrieved` noise (also at interpreter exit)."""
    path = damaged_copy(ckpt, tmp_path, "truncate base")
    proc = subprocess.run([sys.executable, "-m", "lav2_jax.cli.main", "generate", "--ckpt", path, "--prompt", "hi",
                           "--max-new-tokens", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"))
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err[-3000:]
    assert f"checkpoint {path}, item 'base', array " in err and "unreadable" in err, err


@pytest.mark.parametrize("how, message", [("delete adapter file", "item 'adapter', array "),
                                          ("delete adapter metadata", "item 'adapter': its _METADATA file is missing")])
def test_damaged_adapter_is_a_named_error(ckpt, tmp_path, capsys, how, message):
    path = damaged_copy(ckpt, tmp_path, how)
    err = one_line_error(capsys, "--ckpt", path, "--prompt", "hi", "--max-new-tokens", "2")
    assert f"checkpoint {path}, {message}" in err, err
