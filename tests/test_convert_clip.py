"""`lav2 convert clip`: OpenAI state dict, OpenAI TorchScript archive, Hugging Face directory.

Proves: each converted tower reproduces the `transformers` CLIP reference (projection of the post-LN hidden states
of all tokens) to max-abs ≤ 1e-5 in float32; the VisionConfig (width, depth, patch, resolution, output size) is
inferred from tensor shapes; the text tower keys of a full CLIP file are ignored; the three sources agree exactly.
"""

import jax
import numpy as np
import torch

from lav2_jax.core import presets
from lav2_jax.checkpoint import load_vision
from lav2_jax.checkpoint.convert.clip import convert_clip
from ckpt_utils import assert_trees_equal
from ckpt_writers import hf_clip, hf_clip_tokens, openai_clip_state_dict, write_torchscript

VISION = presets.get_vision("tiny")


def test_clip_sources(tmp_path):
    model = hf_clip(VISION)
    images = np.random.default_rng(0).standard_normal((2, VISION.image_size, VISION.image_size, 3)).astype(np.float32)
    ref = hf_clip_tokens(model, images)
    sd = openai_clip_state_dict(model)
    torch.save(sd, tmp_path / "clip.pt")
    model.save_pretrained(tmp_path / "hf")
    outs = {"state_dict": convert_clip(str(tmp_path / "clip.pt"), str(tmp_path / "o1"), heads=VISION.heads,
                                       weight_dtype="float32"),
            "torchscript": convert_clip(write_torchscript(tmp_path / "ViT.pt", sd), str(tmp_path / "o2"),
                                        heads=VISION.heads, weight_dtype="float32"),
            "hf": convert_clip(str(tmp_path / "hf"), str(tmp_path / "o3"), weight_dtype="float32")}
    loaded = {}
    for name, out in outs.items():
        tower, params = load_vision(out, dtype="float32")
        assert tower.config.replace(mlp_ratio=4.0) == VISION.replace(mlp_ratio=4.0), (name, tower.config)
        ours = np.asarray(jax.jit(tower.apply)({"params": params}, images))
        assert np.max(np.abs(ours - ref)) <= 1e-5, (name, np.max(np.abs(ours - ref)))
        loaded[name] = params
    assert_trees_equal(loaded["state_dict"], loaded["torchscript"])
    assert_trees_equal(loaded["state_dict"], loaded["hf"])
