"""`generate` under a mesh (2 fake CPU devices, in a subprocess): parameters on their training shardings, the batch
split over data; the greedy tokens equal the single-device ones. Also: a bundle whose parameters already live on a
mesh (as `load_pretrained(..., mesh=)` leaves them) is generated from on that mesh without passing it."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax
    from generate_helpers import random_images, tiny_bundle
    from lav2_jax.inference import generate
    from lav2_jax.inference.generation import _param_shardings, find_mesh
    from lav2_jax.core.sharding import make_mesh

    assert jax.device_count() == 2
    bundle = tiny_bundle("release-bias", vision=True)
    pix = random_images(3)
    prompts, images = ["hi", "a longer prompt of text", "middle one"], [pix[0], None, pix[2]]
    ref = generate(bundle, prompts, images=images, max_new_tokens=6, temperature=0).token_ids
    for shape in ({"data": 2, "fsdp": 1}, {"data": 1, "fsdp": 2}):
        mesh = make_mesh(**shape)
        assert generate(bundle, prompts, images=images, max_new_tokens=6, temperature=0, mesh=mesh).token_ids == ref
    placed = jax.device_put(bundle.params, _param_shardings(bundle.model, mesh))
    emb = placed["tok_embeddings"]["embedding"]
    assert len(emb.sharding.device_set) == 2 and not emb.sharding.is_fully_replicated  # FSDP over embed
    bundle.params = placed
    assert find_mesh(placed) is mesh
    assert generate(bundle, prompts, images=images, max_new_tokens=6, temperature=0).token_ids == ref
    print("OK")
""")


def test_sharded_generation_matches_single_device():
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", "import conftest\n" + SCRIPT], cwd=here, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-2000:] + proc.stderr[-4000:]
