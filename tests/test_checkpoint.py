"""The checkpoint format: save_pretrained / load_pretrained / save_adapter / load_adapter.

Proves: a bit-exact round trip of every leaf (frozen bf16 and float32 adapters), identical logits after reload,
the base/adapter item split follows recipe `all-adapters`, `dtype="float32"` upcasts everything, adapter overlays
(separate dir, adapter-only dir pointing at its base), restores land on the mesh's NamedShardings (4 virtual CPU
devices, in a subprocess), and writes are atomic (no target dir after a failure; no silent overwrite).
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import lav2_jax
from lav2_jax.core import presets
from lav2_jax.checkpoint import items as items_mod
from lav2_jax.checkpoint import load_adapter, read_config, save_adapter, save_pretrained
from lav2_jax.checkpoint.pretrained import adapter_mask
from lav2_jax.model.factory import build_model
from ckpt_utils import assert_trees_equal, random_params, write_sentencepiece
from model_utils import random_tokens

VISION = presets.get_vision("tiny")


def _model(adapter="release-lora-bias", weight_dtype="float32"):
    config = presets.get_model("tiny").replace(weight_dtype=weight_dtype)
    return build_model(config, presets.tiny_adapter(adapter, config, VISION), VISION)


def _params(model, seed=0):
    return random_params(model, seed)


def _logits(model, params):
    tokens = random_tokens(2, 9, model.config.vocab_size)
    images = jax.random.normal(jax.random.PRNGKey(3), (2, VISION.image_size, VISION.image_size, 3))
    return np.asarray(jax.jit(model.apply)({"params": params}, tokens, images, jnp.asarray([True, False])))


def test_round_trip_exact_and_items_split(tmp_path):
    model = _model(weight_dtype="bfloat16")
    params = _params(model)
    tok = write_sentencepiece(str(tmp_path / "tok" / "tokenizer.model"))
    out = save_pretrained(tmp_path / "ckpt", model, params, tokenizer=tok, channel_order="bgr", meta={"src": "t"})
    bundle = lav2_jax.load_pretrained(out)
    assert_trees_equal(bundle.params, params)
    assert bundle.channel_order == "bgr" and bundle.config.meta == {"src": "t"}
    assert bundle.model.config == model.config and bundle.model.adapter == model.adapter
    assert bundle.model.vision == model.vision
    assert bundle.tokenizer is not None and bundle.tokenizer.bos_id == 1
    np.testing.assert_array_equal(_logits(bundle.model, bundle.params), _logits(model, params))
    base = set(items_mod.item_shapes(os.path.join(out, "base")))
    adapter = set(items_mod.item_shapes(os.path.join(out, "adapter")))
    assert not base & adapter
    assert ("layers", "attention", "wq", "kernel") in base and ("clip", "proj") in base
    assert ("layers", "attention", "wq", "lora_b") in adapter and ("adapter_query",) in adapter
    assert ("connector", "visual_query") in adapter and ("norm", "scale") in adapter
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary dirs left


def test_config_names_its_system_and_one_without_it_still_loads(tmp_path):
    """config.json records the adapter's system; one written before it did (no "system") loads the same."""
    model = _model()
    params = _params(model)
    out = save_pretrained(tmp_path / "ckpt", model, params)
    path = os.path.join(out, "config.json")
    with open(path) as f:
        data = json.load(f)
    assert data["system"] == "lav2" and read_config(out).system == "lav2"
    del data["system"]
    with open(path, "w") as f:
        json.dump(data, f)
    bundle = lav2_jax.load_pretrained(out)
    assert bundle.config.system == "lav2" and bundle.model.adapter == model.adapter
    np.testing.assert_array_equal(_logits(bundle.model, bundle.params), _logits(model, params))
    with open(path, "w") as f:
        json.dump(dict(data, system="owl"), f)
    with pytest.raises(ValueError, match="names system 'owl' but its adapter is of system 'lav2'"):
        read_config(out)


def test_restore_in_runs_of_bounded_size_is_exact(tmp_path, monkeypatch):
    """Restores go in runs of at most CHUNK_BYTES (host-memory bound); many small runs give the same tree."""
    model = _model(weight_dtype="bfloat16")
    params = _params(model)
    out = save_pretrained(tmp_path / "ckpt", model, params)
    calls = []
    real_restore = items_mod.ocp.PyTreeCheckpointer.restore
    monkeypatch.setattr(items_mod.ocp.PyTreeCheckpointer, "restore",
                        lambda self, *a, **kw: calls.append(1) or real_restore(self, *a, **kw))
    monkeypatch.setattr(items_mod, "CHUNK_BYTES", 4096)
    assert_trees_equal(lav2_jax.load_pretrained(out).params, params)
    n_leaves = len(jax.tree_util.tree_leaves(params))
    assert 2 < len(calls) < n_leaves  # split, but small leaves still share a run


def test_float32_load(tmp_path):
    model = _model(weight_dtype="bfloat16")
    params = _params(model)
    out = save_pretrained(tmp_path / "ckpt", model, params)
    bundle = lav2_jax.load_pretrained(out, dtype="float32")
    assert bundle.model.config.weight_dtype == "float32" and bundle.model.config.dtype == "float32"
    assert bundle.model.vision.dtype == "float32"
    for leaf in jax.tree.leaves(bundle.params):
        assert leaf.dtype == jnp.float32
    assert_trees_equal(bundle.params, jax.tree.map(lambda x: x.astype(jnp.float32), params))
    assert bundle.tokenizer is None


def test_adapter_overlay(tmp_path):
    model = _model()
    params = _params(model)
    base = save_pretrained(tmp_path / "base", model, params)
    trained = _params(model, seed=7)  # different adapter values (and different frozen values, which are ignored)
    ad = save_adapter(tmp_path / "ad", model, trained, base=base)
    cfg = read_config(ad)
    assert cfg.items == ("adapter",) and cfg.base == base
    assert not os.path.exists(os.path.join(ad, "base"))
    mask = adapter_mask(model, params)
    assert any(mask.values()) and not all(mask.values())
    expected = {k: (trained if mask[k] else params) for k in mask}
    expected = traverse_util.unflatten_dict({k: traverse_util.flatten_dict(src)[k] for k, src in expected.items()})
    for bundle in (lav2_jax.load_pretrained(base, adapter=ad), lav2_jax.load_pretrained(ad)):
        assert_trees_equal(bundle.params, expected)
    adapter_only = load_adapter(ad)
    chex.assert_trees_all_equal(adapter_only["adapter_query"], trained["adapter_query"])
    assert "tok_embeddings" not in adapter_only


def test_save_adapter_missing_leaf(tmp_path):
    model = _model()
    params = _params(model)
    base = save_pretrained(tmp_path / "base", model, params)
    flat = traverse_util.flatten_dict(params)
    del flat[("adapter_query",)]
    with pytest.raises(ValueError, match="adapter_query"):
        save_adapter(tmp_path / "ad", model, traverse_util.unflatten_dict(flat), base=base)
    assert not os.path.exists(tmp_path / "ad")


def test_atomic_write(tmp_path, monkeypatch):
    model = _model("none")
    params = _params(model)
    save_pretrained(tmp_path / "ckpt", model, params)
    with pytest.raises(FileExistsError):
        save_pretrained(tmp_path / "ckpt", model, params)
    calls = []

    def failing(path, tree):
        calls.append(path)
        raise RuntimeError("disk full")

    monkeypatch.setattr("lav2_jax.checkpoint.pretrained.save_item", failing)
    with pytest.raises(RuntimeError):
        save_pretrained(tmp_path / "other", model, params)
    assert calls and not os.path.exists(tmp_path / "other")
    assert os.listdir(tmp_path) == ["ckpt"]
    with open(tmp_path / "ckpt" / "config.json") as f:
        assert json.load(f)["format_version"] == 1


def test_restore_onto_mesh(tmp_path):
    """4 virtual CPU devices (a subprocess: the device count is fixed at jax start-up)."""
    model = _model("paper", weight_dtype="bfloat16")
    out = save_pretrained(tmp_path / "ckpt", model, _params(model))
    script = textwrap.dedent(f"""
        import jax, flax.linen as nn
        from flax import traverse_util
        import lav2_jax
        from lav2_jax.core.sharding import make_mesh, logical_shardings
        from lav2_jax.model.factory import abstract_params
        mesh = make_mesh(data=1, fsdp=2, tensor=2)
        b = lav2_jax.load_pretrained({out!r}, mesh=mesh)
        want = traverse_util.flatten_dict(logical_shardings(abstract_params(b.model, boxed=True), mesh))
        got = traverse_util.flatten_dict(b.params)
        assert set(want) == set(got)
        sharded = 0
        for k, arr in got.items():
            assert arr.sharding.is_equivalent_to(want[k], arr.ndim), (k, arr.sharding, want[k])
            sharded += len(arr.sharding.device_set) == 4 and not arr.sharding.is_fully_replicated
        assert sharded > 5, sharded
        print("OK", sharded)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_unstacked_layout_loads_each_layer_once_with_the_same_logits(tmp_path):
    """`layout="unstacked"` (what `lav2 generate` uses on one CPU device): the unscanned model over per-layer leaves
    equal to slices of the stacked ones, identical logits and greedy ids, and the stacked arrays freed on the way."""
    from generate_helpers import CharTokenizer
    from lav2_jax.inference import generate
    from lav2_jax.model.factory import unstack_layers
    from lav2_jax.core.sharding import make_mesh

    model = _model()
    params = _params(model)
    tok = write_sentencepiece(str(tmp_path / "tok" / "tokenizer.model"))
    out = save_pretrained(tmp_path / "ckpt", model, params, tokenizer=tok)
    scanned = lav2_jax.load_pretrained(out)
    flat_bundle = lav2_jax.load_pretrained(out, layout="unstacked")
    n = model.config.n_layers
    assert not flat_bundle.model.config.scan_layers and not flat_bundle.config.model.scan_layers
    assert "layers" not in flat_bundle.params and sorted(k for k in flat_bundle.params if k.startswith("layers_")) \
        == [f"layers_{i}" for i in range(n)]
    assert_trees_equal(flat_bundle.params, unstack_layers(params, n))
    np.testing.assert_allclose(_logits(flat_bundle.model, flat_bundle.params), _logits(model, params),
                               atol=1e-5, rtol=0)
    kw = dict(max_new_tokens=5, temperature=0)
    ids = [generate(dataclasses.replace(b, tokenizer=CharTokenizer()), ["a b", "c"], **kw).token_ids
           for b in (flat_bundle, scanned)]  # the tiny model's 256 ids: a character tokenizer decodes them all
    assert ids[0] == ids[1] and any(ids[0])

    stacked = jax.tree_util.tree_map(jnp.array, params)
    unstack_layers(stacked, n, consume=True)
    assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(stacked["layers"]))
    assert not any(x.is_deleted() for k, v in stacked.items() if k != "layers" for x in jax.tree_util.tree_leaves(v))

    with pytest.raises(ValueError, match="layout"):
        lav2_jax.load_pretrained(out, layout="rows")
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="single-device"):
        lav2_jax.load_pretrained(out, mesh=mesh, layout="unstacked")
