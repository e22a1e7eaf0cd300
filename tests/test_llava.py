"""LLaVA against transformers' `LlavaForConditionalGeneration` (torch float32, tiny random weights).

Tolerance: max-abs 1e-5 on float32 logits. Covered: `lav2 convert llava` of both HF key layouts (hub
`vision_tower.vision_model.*`, transformers-5 `vision_tower.*`) and of the original repo's layout (LLaMA keys +
`model.mm_projector.*` with a separate CLIP, `linear` projector, `cls_patch`); the tokenizer against
`LlavaProcessor`; greedy ids through `lav2_jax.generate` (a batch with and without an image); `next_token_logits`,
`encode_images`; the `lav2 export hf` round trip.
"""

import json
import os

import numpy as np
import pytest
import torch

import lav2_jax
from ckpt_utils import write_sentencepiece
from ckpt_writers import perturbed
from lav2_jax.systems.llava.convert import convert_llava
from lav2_jax.checkpoint.pretrained import load_pretrained

PROMPT = "USER: <image>\nthe cat sat on the mat ASSISTANT:"
TEXT_PROMPT = "USER: a dog ran after a red ball ASSISTANT:"
SIZE, PATCH = 32, 8  # 16 patches → 16 image tokens (`default` drops CLS)


def _tokenizer_dir(path: str) -> tuple[str, int, int]:
    """A Llama tokenizer directory (sentencepiece → tokenizer.json) with `<image>` and `<pad>` added, as llava-hf."""
    from transformers import LlamaTokenizer

    sp = write_sentencepiece(os.path.join(path, "sp", "tokenizer.model"), vocab_size=64)
    tok = LlamaTokenizer.from_pretrained(os.path.dirname(sp), add_bos_token=True)
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(path)
    return path, tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<pad>")


def _hf_llava(image_id: int, pad_id: int, seed: int = 0):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=128, pad_token_id=pad_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=SIZE, patch_size=PATCH, hidden_act="quick_gelu")
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id, image_seq_length=16,
                      attn_implementation="eager")
    torch.manual_seed(seed)
    return perturbed(LlavaForConditionalGeneration(cfg), 0.05, seed)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

    root = tmp_path_factory.mktemp("llava")
    tok_dir, image_id, pad_id = _tokenizer_dir(str(root / "tok"))
    hf = _hf_llava(image_id, pad_id)
    new_dir = str(root / "hf_new")
    hf.save_pretrained(new_dir)  # transformers 5: vision_tower.* without vision_model.
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.save_pretrained(new_dir)
    hub_dir = str(root / "hf_hub")  # the hub's legacy layout: vision_tower.vision_model.*
    os.makedirs(hub_dir)
    sd = load_file(os.path.join(new_dir, "model.safetensors"))
    save_file({("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
               for k, v in sd.items()}, os.path.join(hub_dir, "model.safetensors"))
    for n in os.listdir(new_dir):
        if n.endswith(".json") and n != "model.safetensors.index.json":
            with open(os.path.join(new_dir, n)) as src, open(os.path.join(hub_dir, n), "w") as dst:
                dst.write(src.read())
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": SIZE},
                                                                  crop_size={"height": SIZE, "width": SIZE}),
                               tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    inputs = processor(text=PROMPT, images=Image.fromarray(rgb), return_tensors="pt")
    ckpts = {}
    for name, d in (("new", new_dir), ("hub", hub_dir)):
        ckpts[name] = convert_llava(d, str(root / f"ckpt_{name}"), weight_dtype="float32")
    return {"root": root, "hf": hf, "inputs": inputs, "ckpts": ckpts, "image_id": image_id, "new_dir": new_dir,
            "bundle": load_pretrained(ckpts["hub"], dtype="float32")}


def _nhwc(pixel_values) -> np.ndarray:
    return pixel_values.permute(0, 2, 3, 1).numpy()


def _hf_logits(hf, inputs) -> np.ndarray:
    with torch.no_grad():
        return hf(**inputs).logits.numpy()


def test_processor_tokenization_is_exact(env):
    ids = env["bundle"].tokenizer.encode(PROMPT, bos=True)
    assert ids == env["inputs"]["input_ids"][0].tolist()
    assert ids.count(env["image_id"]) == 16
    assert env["bundle"].tokenizer.rule == "added"


@pytest.mark.parametrize("layout", ["new", "hub"])
def test_logits_match_transformers(env, layout):
    bundle = env["bundle"] if layout == "hub" else load_pretrained(env["ckpts"][layout], dtype="float32")
    s = bundle.model.adapter.splice
    assert (s.system, s.feature_layer, s.select, s.projector, s.n_tokens) == ("llava", -2, "patch", "mlp2x_gelu", 16)
    ref = _hf_logits(env["hf"], env["inputs"])
    ours = bundle.model.apply({"params": bundle.params}, env["inputs"]["input_ids"].numpy(),
                              _nhwc(env["inputs"]["pixel_values"]))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=0)
    last = lav2_jax.next_token_logits(bundle, [PROMPT], images=_nhwc(env["inputs"]["pixel_values"]))
    assert last.shape == (1, 80) and last.dtype == np.float32
    np.testing.assert_allclose(last[0], ref[0, -1], atol=1e-5, rtol=0)


def test_encode_images_equal_transformers_features(env):
    with torch.no_grad():
        ref = env["hf"].model.get_image_features(pixel_values=env["inputs"]["pixel_values"])
    ref = (ref.pooler_output if hasattr(ref, "pooler_output") else ref)
    ref = torch.cat(list(ref)) if isinstance(ref, (list, tuple)) else ref
    ours = lav2_jax.encode_images(env["bundle"], _nhwc(env["inputs"]["pixel_values"]))
    assert ours.shape == (1, 16, 64)
    np.testing.assert_allclose(ours, ref.reshape(ours.shape).numpy(), atol=1e-5, rtol=0)


def test_greedy_ids_match_transformers_in_a_mixed_batch(env):
    hf, inputs, bundle = env["hf"], env["inputs"], env["bundle"]
    n = 8
    eos = bundle.tokenizer.eos_id

    def hf_greedy(**kw):
        with torch.no_grad():
            out = hf.generate(**kw, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=0)
        new = out[0, kw["input_ids"].shape[1]:].tolist()
        return new[:new.index(eos)] if eos in new else new

    text_ids = torch.tensor([bundle.tokenizer.encode(TEXT_PROMPT, bos=True)])
    ref = [hf_greedy(**inputs), hf_greedy(input_ids=text_ids, attention_mask=torch.ones_like(text_ids))]
    image = _nhwc(inputs["pixel_values"])[0]
    got = lav2_jax.generate(bundle, [PROMPT, TEXT_PROMPT], images=[image, None], max_new_tokens=n, temperature=0)
    assert got.token_ids == ref
    assert len(ref[0]) > 0


def test_prompt_image_count_is_checked(env):
    with pytest.raises(ValueError, match="image placeholder"):
        lav2_jax.generate(env["bundle"], [TEXT_PROMPT], images=[_nhwc(env["inputs"]["pixel_values"])[0]],
                          max_new_tokens=2, temperature=0)


def test_export_hf_round_trip(env, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from lav2_jax.checkpoint.export.hf import export_hf

    out = export_hf(env["ckpts"]["new"], str(tmp_path / "exported"), dtype="float32")
    back = LlavaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    np.testing.assert_allclose(_hf_logits(back, env["inputs"]), _hf_logits(env["hf"], env["inputs"]), atol=1e-5,
                               rtol=0)
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))


def _original_dir(env, root) -> tuple[str, str, torch.nn.Module]:
    """The original repo's layout of the same LLM + a random `linear` projector, and the tower as a CLIP dir."""
    from safetensors.torch import save_file

    hf = env["hf"]
    torch.manual_seed(3)
    proj = torch.nn.Linear(32, 64)
    sd = {k.replace("model.language_model.", "model."): v for k, v in hf.state_dict().items()
          if k.startswith("model.language_model.") or k == "lm_head.weight"}
    sd.update({"model.mm_projector.weight": proj.weight.detach(), "model.mm_projector.bias": proj.bias.detach()})
    d = os.path.join(root, "orig")
    os.makedirs(d)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(d, "model.safetensors"))
    cfg = hf.config.text_config.to_dict()
    cfg.update({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "mm_projector_type": "linear",
                "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 32,
                "mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch", "image_aspect_ratio": "pad"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    write_sentencepiece(os.path.join(d, "tokenizer.model"), vocab_size=64)  # the original ships sentencepiece only
    clip_dir = os.path.join(root, "clip")
    hf.model.vision_tower.save_pretrained(clip_dir)
    return d, clip_dir, proj


def test_original_layout_linear_cls_patch(env, tmp_path):
    d, clip_dir, proj = _original_dir(env, str(tmp_path))
    ckpt = convert_llava(d, str(tmp_path / "ckpt"), clip=clip_dir, weight_dtype="float32")
    bundle = load_pretrained(ckpt, dtype="float32")
    s = bundle.model.adapter.splice
    assert (s.projector, s.select, s.n_tokens, s.image_token_id) == ("linear", "cls_patch", 17, 80)
    assert s.image_aspect_ratio == "pad"
    tok = bundle.tokenizer
    assert tok.rule == "split"
    ids = tok.encode(PROMPT, bos=True)
    head, tail = PROMPT.split("<image>")
    assert ids == [tok.bos_id] + tok.base.encode(head) + [80] * 17 + tok.base.encode(tail)
    # Reference: the original's forward from transformers' parts (tower layer −2 with CLS, linear, spliced embeds).
    hf = env["hf"]
    pixels = env["inputs"]["pixel_values"]
    with torch.no_grad():
        feats = proj(hf.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2])[0]
        ids_t = torch.tensor([ids])
        emb = hf.model.language_model.embed_tokens(torch.where(ids_t == 80, 0, ids_t))
        emb[0, ids_t[0] == 80] = feats
        ref = hf.lm_head(hf.model.language_model(inputs_embeds=emb).last_hidden_state).numpy()
    ours = bundle.model.apply({"params": bundle.params}, np.asarray([ids]), _nhwc(pixels))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=0)


def test_conversion_errors_name_the_key(env, tmp_path):
    from safetensors.torch import load_file, save_file

    d = str(tmp_path / "broken")
    os.makedirs(d)
    sd = load_file(os.path.join(env["new_dir"], "model.safetensors"))
    sd.pop("multi_modal_projector.linear_2.bias")
    sd["multi_modal_projector.extra.weight"] = torch.zeros(2)
    save_file(sd, os.path.join(d, "model.safetensors"))
    with open(os.path.join(env["new_dir"], "config.json")) as src, open(os.path.join(d, "config.json"), "w") as dst:
        dst.write(src.read())
    with pytest.raises(ValueError, match="multi_modal_projector.linear_2.bias"):
        convert_llava(d, str(tmp_path / "out"))
    sd["multi_modal_projector.linear_2.bias"] = torch.zeros(64)
    save_file(sd, os.path.join(d, "model.safetensors"))
    with pytest.raises(ValueError, match="unexpected key 'multi_modal_projector.extra.weight'"):
        convert_llava(d, str(tmp_path / "out"))
    with pytest.raises(ValueError, match="--clip"):
        convert_llava(d, str(tmp_path / "out"), clip=d)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("shape", [(40, 64), (64, 40), (32, 32)])
def test_pad_preprocessing_equals_llava_image_processor(shape):
    from PIL import Image
    from transformers import LlavaImageProcessor

    from lav2_jax.data.images import CLIP_MEAN, CLIP_STD, expand_to_square, preprocess

    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, shape + (3,), dtype=np.uint8))
    proc = LlavaImageProcessor(do_pad=True, size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                               image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    ref = proc(images=img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(preprocess(img, SIZE, aspect_ratio="pad"), ref, atol=1e-5, rtol=0)
    square = np.asarray(expand_to_square(img))
    assert square.shape[0] == square.shape[1] == max(shape)
    if shape[0] != shape[1]:
        assert tuple(square[0, 0]) == (122, 116, 104)
