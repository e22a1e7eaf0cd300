"""A fourth system, defined in this file alone and registered for this module only (issue 24; docs/design.md,
"Package layout and layering"): LLaMA-Adapter's adapter prompts, bias/scale and norm tuning, with a linear projector
of the frozen CLIP tower's tokens spliced at `<image>` placeholders (as LLaVA does) instead of gated visual prompts.

It brings its own adapter preset, recipe, prompt format, visual front-end and data hooks, then goes the way a user
goes: a tokenizer and a conversation dataset built by the library's builders, two steps of `trainer.train`,
`export_run` → `load_pretrained` → `generate`. Nothing outside this file knows it.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lav2_jax import systems
from lav2_jax.checkpoint import load_pretrained
from lav2_jax.checkpoint.items import item_shapes
from lav2_jax.core import param_groups as pg
from lav2_jax.core import presets
from lav2_jax.core.config import AdapterConfig, SpliceConfig
from lav2_jax.core.sharding import make_mesh
from lav2_jax.data import images
from lav2_jax.data.builder import Source, build
from lav2_jax.data.image_prompt import ImagePromptTokenizer
from lav2_jax.data.samples import Tokenized
from lav2_jax.data.testing import image_bytes, train_sentencepiece, write_image
from lav2_jax.inference import generation, prompts
from lav2_jax.model.clip import CLIPVisionTower, Dense
from lav2_jax.model.factory import abstract_params
from lav2_jax.train import state as state_lib
from lav2_jax.train.defaults import base_config, group
from lav2_jax.train.export import export_run
from lav2_jax.train.trainer import train

NAME = "prompt-splice"
PROJECTOR = r"^prompt_projector/"
TINY_CLIP = presets.get_vision("tiny")  # 32 px, 8 px patches: CLS + 16 patches
ADAPTER = AdapterConfig(linear_kind="output", norm_tuning=True, prompt_len=3, prompt_layers=3, visual_fusion="none",
                        splice=SpliceConfig(system=NAME, image_token_id=256, select="all", projector="linear",
                                            n_tokens=TINY_CLIP.num_tokens))
RECIPE = systems.Recipe("prompt-splice-joint", NAME, (
    (PROJECTOR, pg.C),
    (r"^adapter_query$", pg.I), (pg.PROMPT_GATE_PATTERN, pg.I), (pg.NORM_PATTERN, pg.I),
    (pg.LINEAR_ADAPTER_PATTERN, pg.I)), "the projector (caption); prompts, gates, norms, bias/scale", norm_tuning=True)


def projector_tokens(adapter, vision, model, pixels):
    """pixels [M, H, W, 3] → [M, 1 + P, D]: every frozen CLIP token through one trainable linear map."""
    tokens = jax.lax.stop_gradient(CLIPVisionTower(vision, name="clip")(pixels))
    return Dense(model.dim, ("vis_embed", "embed"), weight_dtype=None, dtype=model.dtype,
                 name="prompt_projector")(tokens).astype(jnp.dtype(model.dtype))


class PromptSplice(systems.System):
    name, title = NAME, "LLaMA-Adapter prompts + spliced linear projector (test only)"
    adapter_presets = {"prompt-splice-tiny": ADAPTER}
    preset_visions = {"prompt-splice-tiny": "tiny"}
    recipes = {RECIPE.name: RECIPE}
    adapter_modules = (PROJECTOR,)  # what a checkpoint's adapter item holds besides the language model's adapters
    spliced_samples = True

    def visual_front_end(self, adapter):
        return projector_tokens

    def check_configs(self, adapter, vision):
        if vision is not None and adapter.splice.n_tokens != vision.num_tokens:
            raise ValueError(f"n_tokens {adapter.splice.n_tokens} != the tower's {vision.num_tokens} tokens")

    def model_configs(self, mc, model):
        return presets.get_adapter(mc.adapter), presets.get_vision(mc.vision)

    def pipeline_options(self, d, adapter):
        return dict(image_tokens=adapter.splice.n_tokens, image_token_id=adapter.splice.image_token_id,
                    augment=False)

    def tokenize_record(self, tok, record, pick, cfg):
        """A conversation record's first exchange: BOS + prompt (with the image's placeholders) + answer + EOS."""
        question, answer = (v.decode() if isinstance(v, bytes) else str(v) for v in record["values"][:2])
        has_image = bool(record.get("has_image", False))
        prompt = ImagePromptTokenizer(tok, cfg.image_token_id, cfg.image_tokens).encode(
            self.instruction_prompt(None, question, image=has_image), bos=True)
        ids = np.asarray(prompt + tok.encode_continuation(" " + answer) + [tok.eos_id], np.int32)
        mask = (np.arange(1, len(ids)) >= len(prompt)).astype(np.float32)[:cfg.max_len]
        return (Tokenized(ids[:-1][:cfg.max_len], ids[1:][:cfg.max_len], mask) if mask.any() else None), int(has_image)

    def record_images(self, record, n_images, cfg, rng, name):
        size = cfg.image_size
        if not n_images:
            return {"image": np.zeros((size, size, 3), np.float32)}
        return {"image": images.preprocess(record["image"], size, cfg.channel_order, name=name)}

    def instruction_prompt(self, adapter, instruction, input_text=None, image=False):
        return ("<image>\n" if image else "") + f"Q: {instruction}\nA:"

    def chat_prompt(self, adapter, turns, system=None, image=False):
        text = "".join(f"Q: {t}\nA:" if role == "human" else f" {t}\n" for role, t in turns)
        return ("<image>\n" if image else "") + text

    def chat_stop(self, adapter):
        return "\nQ:"

    def caption_prompt(self, adapter):
        return self.instruction_prompt(adapter, "Describe the image.", image=True)


COLOURS = ("red", "green", "blue", "yellow")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(model, initial params, trained params, exported checkpoint) of two training steps of the fourth system."""
    systems.register(PromptSplice())
    try:
        tmp = tmp_path_factory.mktemp("fourth")
        rows = [{"image": write_image(str(tmp / f"{i}.png"), 40, 40, seed=i),
                 "conversations": [{"from": "human", "value": "<image>\nWhat colour is it?"},
                                   {"from": "gpt", "value": COLOURS[i % 4]}]} for i in range(8)]
        (tmp / "train.json").write_text(json.dumps(rows))
        tok = train_sentencepiece(str(tmp / "tok.model"), [f"Q: What colour is it?\nA: {c}" for c in COLOURS] * 20,
                                  vocab_size=200, byte_fallback=False)
        build("conversation", [Source("conversation", str(tmp / "train.json"))], str(tmp / "ds"), progress=False)

        c = base_config()
        c.model.update(preset="tiny", adapter="prompt-splice-tiny", vision="tiny", output_scale=25.0, system=NAME)
        c.param_recipe, c.recipe, c.total_steps = RECIPE.name, "full", 2
        c.batch.update(train=4)
        for g in ("caption", "instruction"):
            c.optim[g] = group(1e-2, 0.0, warmup_steps=0, scale_lr_by_batch=False)
        c.loss.vocab_chunk = 64
        c.data.update(source="pipeline", tokenizer=tok)
        c.data.train.update(path=str(tmp / "ds"), max_len=64)
        c.checkpoint.update(every_steps=1, keep=2, use_async=False)
        c.log.update(every_steps=1, tensorboard=False, progress=False, peak_flops=0.0)

        setup, state = state_lib.build(c, make_mesh(1, 1, 1, jax.devices()[:1]))  # what train starts from
        initial = jax.device_get(pg.merge(state["params"], setup.frozen))
        out = train(c, str(tmp / "work"))
        assert out["step"] == 2 and np.isfinite(out["metrics"]["loss/train"])
        trained = jax.device_get(pg.merge(out["state"]["params"], setup.frozen))
        yield setup.model, initial, trained, export_run(str(tmp / "work"), str(tmp / "export"))
    finally:
        systems.unregister(NAME)


def _flat(tree):
    return {pg.path_str(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_the_recipe_trains_its_groups_and_nothing_else(run):
    model, initial, trained, ckpt = run
    labels = _flat(pg.param_groups(abstract_params(model), RECIPE.name, model.adapter))
    caption = {p for p, g in labels.items() if g == pg.C}
    instruction = {p for p, g in labels.items() if g == pg.I}
    assert caption == {"prompt_projector/kernel", "prompt_projector/bias"}
    assert {"adapter_query", "layers/attention/gate", "layers/attention/wq/bias", "layers/feed_forward/w2/scale",
            "layers/attention_norm/scale", "norm/scale"} <= instruction
    assert not any(p.startswith("clip/") or p.endswith("/kernel") or p.endswith("embedding") for p in instruction)
    before, after = _flat(initial), _flat(load_pretrained(ckpt).params)
    assert before.keys() == after.keys() == labels.keys()
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    assert moved == caption | instruction
    # the checkpoint's adapter item holds exactly the trained leaves (the projector too: `System.adapter_modules`)
    assert {pg.path_str(k) for k in item_shapes(f"{ckpt}/adapter")} == caption | instruction


def test_loaded_model_gives_the_trained_logits_and_greedy_generation(run):
    _, initial, trained, ckpt = run
    bundle = load_pretrained(ckpt)
    assert bundle.config.system == NAME and bundle.model.front_end is projector_tokens
    image = images.preprocess(image_bytes(40, 40, seed=3), TINY_CLIP.image_size)
    prompt = prompts.instruction_prompt(bundle.model.adapter, "What colour is it?", image=True)
    ids = bundle.tokenizer.encode(prompt, bos=True)
    assert ids.count(256) == TINY_CLIP.num_tokens  # `<image>` became the splice's placeholders

    def logits(params, ids):
        return np.asarray(bundle.model.apply({"params": params}, jnp.asarray([ids]), jnp.asarray(image[None, None])))

    np.testing.assert_allclose(logits(bundle.params, ids), logits(trained, ids), rtol=0, atol=1e-6)
    assert float(np.abs(logits(trained, ids) - logits(initial, ids)).max()) > 1e-4

    by_hand = list(ids)
    for _ in range(3):  # greedy: the argmax of each next-token distribution, stopping at EOS
        token = int(np.argmax(logits(bundle.params, by_hand)[0, -1]))
        if token == bundle.tokenizer.eos_id:
            break
        by_hand.append(token)
    out = generation.generate(bundle, [prompt], images=[image], max_new_tokens=3, temperature=0.0)
    assert out.token_ids[0] == by_hand[len(ids):] and len(out.token_ids[0]) >= 1
