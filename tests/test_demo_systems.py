"""The demo CLIP tower → mPLUG-Owl vision-model conversion of `lav2 demo --systems` (`lav2_jax.demo.system_inits`
through the Owl system's `vision_from_clip`, `lav2_jax.systems.owl.clip_init`);
the tiny run of the comparison itself is in tests/test_demo.py (it reuses that module's demo workdir)."""

import chex
import jax

from lav2_jax.core import presets
from lav2_jax.model.clip import CLIPVisionTower
from lav2_jax.systems.owl.clip_init import clip_to_owl_vision
from lav2_jax.systems.owl.vision import OwlVisionModel


def test_clip_tower_to_owl_vision_layout():
    """The converted tree computes the CLIP tower's tokens before `proj` (same eps), in Owl's per-head layout."""
    vision = presets.get_vision("tiny")
    images = jax.random.normal(jax.random.PRNGKey(1), (2, vision.image_size, vision.image_size, 3))
    clip = CLIPVisionTower(vision).init(jax.random.PRNGKey(0), images)["params"]
    want = CLIPVisionTower(vision.replace(output_dim=0)).apply(
        {"params": {k: v for k, v in clip.items() if k != "proj"}}, images)
    owl = OwlVisionModel(vision.replace(output_dim=vision.width))
    got = owl.apply({"params": clip_to_owl_vision(clip, vision.heads)}, images)
    chex.assert_shape(got, (2, vision.num_tokens, vision.width))
    chex.assert_trees_all_close(got, want, atol=1e-5)
