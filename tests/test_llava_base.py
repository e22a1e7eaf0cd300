"""LLaVA stage 1 from what a user has: a converted Hugging Face Llama + a separately converted CLIP tower,
combined by `lav2 convert llava-base`, with a fresh projector (tiny random models, torch float32 references).

Proves: the combined checkpoint's LM leaves and text-only logits are bit-identical to the converted Llama's (and
≤1e-5 from `LlamaForCausalLM`); the tower's hidden state at the feature layer (−2) equals `CLIPVisionModel`'s
≤1e-5 and the visual tokens are the projector of its patch tokens; the fresh projector is initialised like
`nn.Linear`; a stage-1 step changes the projector only; the stage-1 export over the combined base loads back;
`--weight-dtype bfloat16` stores every frozen array as `convert hf` / `convert clip` with bfloat16 do;
a LLaVA run over a base without a tower, and swapped inputs, are one-line errors.
"""

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from lav2_jax.core import param_groups as pg
from lav2_jax.core import presets
from lav2_jax.checkpoint import load_pretrained, load_vision, read_config, save_adapter
from lav2_jax.checkpoint.convert.clip import convert_clip
from lav2_jax.checkpoint.convert.hf import convert_hf
from lav2_jax.checkpoint.pretrained import Bundle
from lav2_jax.cli.main import main
from lav2_jax.inference.scoring import encode_images
from lav2_jax.core.sharding import make_mesh
from lav2_jax.train import state as state_lib
from lav2_jax.train.synthetic import SyntheticStream
from ckpt_writers import hf_clip, hf_llama, hf_logits, write_hf
from train_utils import ROOT

VISION = presets.get_vision("tiny")
CONFIG = os.path.join(ROOT, "configs", "tiny_llava.py")


def _flat(tree) -> dict:
    return {pg.path_str(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _config(base: str, *extra: str):
    from lav2_jax.cli.train import load_config

    c = load_config(CONFIG, [f"--config.model.base_checkpoint={base}", "--config.param_recipe=llava-stage1",
                             *extra])
    c.unlock()
    c.log.progress = False
    return c


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llava_base")
    lm_cfg = presets.get_model("tiny")
    hf = hf_llama(lm_cfg, seed=3)
    llm = convert_hf(write_hf(str(tmp / "hf"), hf), str(tmp / "llm"), weight_dtype="float32")
    clip = hf_clip(VISION, seed=4)
    clip.save_pretrained(tmp / "clip_hf")
    clip_ckpt = convert_clip(str(tmp / "clip_hf"), str(tmp / "clip"), weight_dtype="float32")
    base = str(tmp / "base")
    assert main(["convert", "llava-base", "--llm", llm, "--clip", clip_ckpt, "--out", base]) == 0
    c = _config(base, "--config.optim.caption.warmup_steps=0")  # a first step that moves the projector
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    setup, state = state_lib.build(c, mesh)
    params = pg.merge(jax.device_get(setup.frozen), jax.device_get(state["params"]))
    return dict(tmp=tmp, hf=hf, clip=clip, llm=llm, clip_ckpt=clip_ckpt, base=base, c=c, setup=setup, state=state,
                params=params)


def test_combined_checkpoint_holds_both_and_no_projector(env):
    cfg, llm, clip = read_config(env["base"]), read_config(env["llm"]), read_config(env["clip_ckpt"])
    assert cfg.model == llm.model and cfg.vision == clip.vision and cfg.adapter.splice is None
    assert cfg.items == tuple(llm.items) + ("vision",) and cfg.base is None
    model = env["setup"].model
    assert model.adapter.splice.n_tokens == VISION.num_patches == 16 and model.vision.output_dim == 0
    assert model.adapter.splice.projector == "mlp2x_gelu" and model.adapter.splice.feature_layer == -2
    trainable = _flat(env["state"]["params"])
    assert set(trainable) == {f"mm_projector/linear_{i}/{p}" for i in (1, 2) for p in ("kernel", "bias")}
    alone = load_pretrained(env["base"])  # loaded by itself: the language model (no splice uses the tower)
    assert alone.model.adapter.splice is None and set(_flat(alone.params)) == set(_flat(
        load_pretrained(env["llm"]).params))


def test_language_model_is_the_converted_llama_bit_for_bit(env):
    plain = load_pretrained(env["llm"])
    ours, ref = _flat(env["params"]), _flat(plain.params)
    assert set(ref) <= set(ours) and all(np.array_equal(ours[k], ref[k]) for k in ref)
    tokens = np.random.default_rng(0).integers(0, 256, (2, 12)).astype(np.int32)  # text-only rows
    model = env["setup"].model
    images = jnp.zeros((2, 1, VISION.image_size, VISION.image_size, 3), jnp.float32)
    llava = np.asarray(jax.jit(model.apply)({"params": env["params"]}, tokens, images))
    lm = np.asarray(jax.jit(plain.model.apply)({"params": plain.params}, tokens))
    assert np.array_equal(llava, lm)
    assert np.max(np.abs(llava - hf_logits(env["hf"], tokens))) <= 1e-5


def test_tower_feature_layer_equals_clip_vision_model(env):
    images = np.random.default_rng(1).standard_normal((2, VISION.image_size, VISION.image_size, 3)).astype(np.float32)
    with torch.no_grad():
        hidden = env["clip"].vision_model(pixel_values=torch.as_tensor(images).permute(0, 3, 1, 2),
                                          output_hidden_states=True).hidden_states[-2].numpy()
    from lav2_jax.model.clip import CLIPVisionTower

    model, params = env["setup"].model, env["params"]
    feats = np.asarray(CLIPVisionTower(model.vision).apply({"params": params["clip"]}, images, feature_layer=-2))
    assert feats.shape == (2, 17, VISION.width) and np.max(np.abs(feats - hidden)) <= 1e-5
    p = {k: np.asarray(v, np.float64) for k, v in _flat(params).items() if k.startswith("mm_projector/")}
    h = hidden[:, 1:].astype(np.float64) @ p["mm_projector/linear_1/kernel"] + p["mm_projector/linear_1/bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))  # exact GELU
    want = h @ p["mm_projector/linear_2/kernel"] + p["mm_projector/linear_2/bias"]
    got = encode_images(Bundle(model, params, None, None), images)
    assert got.shape == (2, 16, model.config.dim) and np.max(np.abs(got - want)) <= 1e-5


def test_fresh_projector_is_initialised_like_torch_linear(env):
    p = _flat(env["state"]["params"])
    for name, fan_in in (("linear_1", VISION.width), ("linear_2", env["setup"].model.config.dim)):
        bound = 1 / np.sqrt(fan_in)
        for leaf in ("kernel", "bias"):
            x = p[f"mm_projector/{name}/{leaf}"]
            assert x.dtype == np.float32 and np.abs(x).max() <= bound and np.abs(x).max() > 0.8 * bound
        assert abs(p[f"mm_projector/{name}/kernel"].std() - bound / np.sqrt(3)) < 0.1 * bound


def test_stage1_step_trains_the_projector_only(env):
    setup, model = env["setup"], env["setup"].model
    s = model.adapter.splice
    stream = SyntheticStream("train", 8, 64, model.config.vocab_size, image_size=VISION.image_size,
                             image_tokens=s.n_tokens, image_token_id=s.image_token_id, answer_vocab=8)
    before = _flat(env["state"]["params"])
    state = jax.tree_util.tree_map(jnp.copy, env["state"])
    state, metrics = setup.train_step(state, setup.frozen, {"train": stream.batch(0)})
    assert np.isfinite(float(metrics["loss/train"]))
    after = _flat(state["params"])
    assert set(after) == set(before) and all(not np.array_equal(before[k], after[k]) for k in before)
    frozen = _flat(setup.frozen)  # the LM and the tower, untouched: equal to the converted checkpoints
    tower = {"clip/" + k: v for k, v in _flat(load_vision(env["clip_ckpt"])[1]).items()}
    ref = {**_flat(load_pretrained(env["llm"]).params), **tower}
    assert set(frozen) <= set(ref) and all(np.array_equal(frozen[k], ref[k]) for k in frozen)


def test_stage1_export_over_the_combined_base_loads_back(env):
    out = save_adapter(str(env["tmp"] / "stage1"), env["setup"].model, env["params"], base=env["base"])
    assert read_config(out).items == ("adapter",)
    bundle = load_pretrained(out)
    assert bundle.model.adapter.splice == env["setup"].model.adapter.splice
    got, want = _flat(bundle.params), _flat(env["params"])
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    state_lib.model_from_config(_config(out).model)  # stage 2 starts from it: its own splice and tower


def _item_arrays(ckpt: str, item: str) -> dict:
    from lav2_jax.checkpoint.items import item_shapes, restore_item

    path, device = os.path.join(ckpt, item), jax.sharding.SingleDeviceSharding(jax.devices()[0])
    targets = {k: jax.ShapeDtypeStruct(s, d, sharding=device) for k, (s, d) in item_shapes(path).items()}
    return {pg.path_str(k): np.asarray(v) for k, v in restore_item(path, targets).items()}


def test_weight_dtype_is_honoured_like_the_other_converters(env):
    """--weight-dtype bfloat16 over float32 inputs: every frozen array bfloat16, bit-equal to the float32 arrays cast
    by numpy and to `convert hf` / `convert clip` run with bfloat16 themselves; config dtypes bfloat16."""
    import ml_dtypes

    out = str(env["tmp"] / "base_bf16")
    assert main(["convert", "llava-base", "--llm", env["llm"], "--clip", env["clip_ckpt"], "--out", out,
                 "--weight-dtype", "bfloat16"]) == 0
    cfg = read_config(out)
    assert (cfg.model.weight_dtype, cfg.model.dtype, cfg.vision.weight_dtype, cfg.vision.dtype) == ("bfloat16",) * 4
    assert cfg.items == read_config(env["base"]).items == ("base", "vision")
    direct = {"base": convert_hf(str(env["tmp"] / "hf"), str(env["tmp"] / "llm_bf16"), weight_dtype="bfloat16"),
              "vision": convert_clip(str(env["tmp"] / "clip_hf"), str(env["tmp"] / "clip_bf16"),
                                     weight_dtype="bfloat16")}
    for item, ref_ckpt in direct.items():
        got, f32 = _item_arrays(out, item), _item_arrays(env["base"], item)
        ref = _item_arrays(ref_ckpt, "base")
        assert set(got) == set(f32) == set(ref) and all(v.dtype == ml_dtypes.bfloat16 for v in got.values())
        assert all(f32[k].dtype == np.float32 for k in f32)
        assert all(np.array_equal(got[k].view(np.uint16), f32[k].astype(ml_dtypes.bfloat16).view(np.uint16))
                   and np.array_equal(got[k].view(np.uint16), ref[k].view(np.uint16)) for k in got)
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree_util.tree_leaves(load_pretrained(out).params))
    same = str(env["tmp"] / "base_f32")  # already float32: linked, not rewritten
    assert main(["convert", "llava-base", "--llm", env["llm"], "--clip", env["clip_ckpt"], "--out", same,
                 "--weight-dtype", "float32"]) == 0
    assert read_config(same).model.weight_dtype == "float32"
    assert os.path.samefile(os.path.join(same, "vision", "_METADATA"), os.path.join(env["clip_ckpt"], "base",
                                                                                      "_METADATA"))


def test_errors_name_the_problem(env, capsys):
    with pytest.raises(ValueError, match="no vision tower for LLaVA.*llava-base"):
        state_lib.model_from_config(_config(env["llm"]).model)
    out = str(env["tmp"] / "swapped")
    for llm, clip, message in ((env["clip_ckpt"], env["llm"], "--llm .*vision-only checkpoint"),
                               (env["llm"], env["base"], "--clip .*not a vision-only checkpoint")):
        assert main(["convert", "llava-base", "--llm", llm, "--clip", clip, "--out", out]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not os.path.exists(out)
