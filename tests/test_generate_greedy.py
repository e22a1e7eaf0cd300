"""Greedy generation with the KV cache equals greedy decoding by repeated full forwards.

A batch of prompts of different lengths, text-only (a model without vision) and with images (tiny CLIP tower) in
both fusion modes — `official` (release: visual tokens added to the adapter prompts) and `early` (paper: gated
visual prompts in the first layer) — with a text-only row inside the image batch. Adapters are perturbed (gates
open, visual tokens amplified) so prompts and images change the greedy choices; the test checks that they do.
"""

import pytest

from generate_helpers import greedy_reference, random_images, tiny_bundle
from lav2_jax.inference import generate, stream

PROMPTS = ["hi", "a longer prompt of text", "middle one"]
MAX_NEW = 7


@pytest.mark.parametrize("adapter_name, vision", [
    ("release-lora-bias", False),  # text-only model: adapter prompts, biases, LoRA, new_gate
    ("release-bias", True),        # official fusion
    ("paper", True),               # early fusion
])
def test_cached_greedy_equals_full_forward_greedy(adapter_name, vision):
    bundle = tiny_bundle(adapter_name, vision=vision)
    images = None
    if vision:
        pix = random_images(len(PROMPTS))
        images = [pix[0], None, pix[2]]  # a text-only row inside an image batch
    got = generate(bundle, PROMPTS, images=images, max_new_tokens=MAX_NEW, temperature=0)
    assert any(len(ids) > 2 for ids in got.token_ids)
    for i, prompt in enumerate(PROMPTS):
        ref = greedy_reference(bundle, prompt, MAX_NEW, image=None if images is None else images[i])
        assert got.token_ids[i] == ref, (i, got.token_ids[i], ref)
        assert got.texts[i] == bundle.tokenizer.decode(ref)
    if vision:  # swapping the two images changes an output: each row sees its own image, and images matter
        swapped = {0: pix[2], 2: pix[0]}
        assert any(greedy_reference(bundle, PROMPTS[i], MAX_NEW, image=im) != got.token_ids[i]
                   for i, im in swapped.items())


def test_stream_yields_the_same_tokens_as_generate():
    bundle = tiny_bundle("release-lora-bias")
    for temperature, top_p, seed in ((0.0, 0.75, 0), (0.9, 0.9, 3)):
        kw = dict(max_new_tokens=MAX_NEW, temperature=temperature, top_p=top_p, seed=seed)
        batch = generate(bundle, [PROMPTS[1]], **kw)
        assert list(stream(bundle, PROMPTS[1], **kw)) == batch.token_ids[0]


def test_single_cpu_device_decodes_over_unstacked_layers():
    """On one CPU device generate() decodes with the unscanned model over unstacked weights (made once per bundle);
    under a mesh it keeps the scanned layout."""
    from lav2_jax.inference.generation import decode_view
    from lav2_jax.core.sharding import make_mesh

    bundle = tiny_bundle("release-bias")
    generate(bundle, PROMPTS[:1], max_new_tokens=2, temperature=0)
    _, model, params = bundle._cpu_decode_view
    assert not model.config.scan_layers and "layers_0" in params and "layers" not in params
    assert decode_view(bundle, bundle.model, bundle.params, None)[1] is params  # cached, not rebuilt
    mesh = make_mesh(1, 1, 1, devices=[bundle.params["norm"]["scale"].devices().pop()])
    assert decode_view(bundle, bundle.model, bundle.params, mesh)[0] is bundle.model
