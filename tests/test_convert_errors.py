"""Bad input to `lav2 convert`: each case fails with a message naming the file and the key, and nothing
is written (no output directory, no temporary directory left beside it)."""

import json
import os

import pytest
import torch

from lav2_jax.core import presets
from lav2_jax.checkpoint.convert.hf import convert_hf
from lav2_jax.checkpoint.convert.meta import convert_meta
from lav2_jax.systems.lav2.convert_official import convert_official
from ckpt_writers import hf_clip, hf_llama, meta_state_dict, write_hf, write_meta, write_official_inputs

CONFIG = presets.get_model("tiny").replace(n_layers=2, vocab_size=64)


@pytest.fixture(scope="module")
def sd():
    return meta_state_dict(hf_llama(CONFIG), CONFIG)


def _fails(tmp_path, fn, *patterns):
    with pytest.raises(ValueError) as e:
        fn(str(tmp_path / "out"))
    for p in patterns:
        assert p in str(e.value), (p, str(e.value))
    assert not [n for n in os.listdir(tmp_path) if n == "out" or n.startswith(".out")]
    return str(e.value)


def _meta(tmp_path, sd, n=1, **kw):
    d = write_meta(tmp_path / "m", CONFIG, sd, n, **kw)
    return lambda out: convert_meta(d, out, weight_dtype="float32")


def test_missing_key(tmp_path, sd):
    bad = {k: v for k, v in sd.items() if k != "layers.1.feed_forward.w3.weight"}
    _fails(tmp_path, _meta(tmp_path, bad), "consolidated.00.pth", "layers.1.feed_forward.w3.weight", "missing")


def test_extra_key(tmp_path, sd):
    bad = dict(sd, **{"layers.2.attention.wq.weight": sd["layers.0.attention.wq.weight"]})
    _fails(tmp_path, _meta(tmp_path, bad), "consolidated.00.pth", "layers.2.attention.wq.weight", "unexpected")


def test_wrong_shape(tmp_path, sd):
    bad = dict(sd, **{"layers.0.attention.wv.weight": torch.zeros(8, CONFIG.dim)})
    _fails(tmp_path, _meta(tmp_path, bad), "consolidated.00.pth", "layers.0.attention.wv.weight", "(8, 64)")


def test_params_json_disagrees(tmp_path, sd):
    msg = _fails(tmp_path, _meta(tmp_path, sd, params_extra={"dim": 128}), "consolidated.00.pth", "params.json")
    assert "tok_embeddings.weight" in msg or "output.weight" in msg or "layers.0" in msg


def test_shard_count_does_not_divide(tmp_path, sd):
    # 3 shards cannot split wk [kv_heads * head_dim = 32, dim] evenly.
    _fails(tmp_path, _meta(tmp_path, sd, 3), "consolidated.00.pth", "3 model-parallel shards do not divide")


def test_truncated_and_foreign_files(tmp_path, sd):
    fn = _meta(tmp_path, sd)
    path = tmp_path / "m" / "consolidated.00.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _fails(tmp_path, fn, "consolidated.00.pth", "not a readable PyTorch checkpoint")
    path.write_text("this is not a checkpoint\n")
    _fails(tmp_path, fn, "consolidated.00.pth", "not a readable PyTorch checkpoint")


def test_truncated_safetensors(tmp_path):
    d = write_hf(tmp_path / "hf", hf_llama(CONFIG), max_shard_size="10MB")
    path = tmp_path / "hf" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    _fails(tmp_path, lambda out: convert_hf(d, out), "model.safetensors")


def test_hf_index_lists_missing_key(tmp_path):
    d = write_hf(tmp_path / "hf", hf_llama(CONFIG))
    index = tmp_path / "hf" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.layers.9.mlp.up_proj.weight"] = next(iter(data["weight_map"].values()))
    index.write_text(json.dumps(data))
    _fails(tmp_path, lambda out: convert_hf(d, out), "model.layers.9.mlp.up_proj.weight")


@pytest.mark.parametrize("flag", ["w_lora", "w_bias"])
def test_adapter_config_disagrees_with_keys(tmp_path, flag):
    inputs = write_official_inputs(str(tmp_path), CONFIG.replace(n_layers=3), hf_llama(CONFIG.replace(n_layers=3)),
                                   hf_clip(presets.get_vision("tiny")))
    released = inputs["released"]
    released["config"][flag] = not released["config"][flag]
    torch.save(released, inputs["adapter"])
    key = "lora_wq_l1" if flag == "w_lora" else "wq.bias"
    _fails(tmp_path, lambda out: convert_official(inputs["llama_dir"], "7B", inputs["adapter"], inputs["clip"], out,
                                                  v_num_heads=4), "adapter.pth", flag, key)
