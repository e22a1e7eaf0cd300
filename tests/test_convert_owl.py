"""`lav2 convert mplug-owl` on a checkpoint in the released key format (every 7B key name, tiny shapes).

Proves: every tensor is consumed (only `rotary_emb.inv_freq` is ignored) and a missing or an extra key fails with
a message naming the file and the key, writing nothing; the converted model's logits on a prompt with an image
spliced in place match `transformers` `LlamaForCausalLM` fed the numpy reference's visual tokens at the
placeholder positions (max-abs ≤ 1e-5, float32); greedy generation from the converted checkpoint through
`lav2_jax.generate` gives the token ids of HF greedy decoding from the same embeddings; `lav2 convert clip
--layout owl` writes a vision-only checkpoint whose leaves are exactly the Owl vision model's tree.
"""

import json
import os

import jax
import numpy as np
import pytest
import torch

import lav2_jax
from lav2_jax.checkpoint import load_pretrained, read_config
from lav2_jax.systems.owl.convert import convert_mplug_owl
from lav2_jax.checkpoint.items import item_shapes
from lav2_jax.cli.main import main
from lav2_jax.systems.owl.templates import prompt as owl_prompt
from ckpt_writers import hf_clip, hf_llama, openai_clip_state_dict
from owl_writers import LLM, VISION, ref_abstractor, ref_vision, released_owl_state, write_released_owl

ATOL = 1e-5


@pytest.fixture(scope="module")
def owl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("owl")
    hf = hf_llama(LLM, seed=1)
    sd = released_owl_state(hf, seed=2)
    src = write_released_owl(tmp / "release", hf, sd)
    out = convert_mplug_owl(src, str(tmp / "ckpt"), weight_dtype="float32")
    return hf, sd, src, out


def _images(n=1, seed=3):
    return np.random.default_rng(seed).standard_normal((n, VISION.image_size, VISION.image_size, 3)).astype(
        np.float32)


def _hf_embeds(hf, sd, ids, images):
    """inputs_embeds [1, T, D] with the reference visual tokens written over the placeholder run."""
    ids = np.asarray(ids)
    visual = ref_abstractor(sd, ref_vision(sd, images))[0]  # [Q + 1, D]
    is_img = ids < 0
    with torch.no_grad():
        emb = hf.model.embed_tokens(torch.from_numpy(np.where(is_img, 0, ids))[None]).double().numpy()
    emb[0, is_img] = visual
    return torch.from_numpy(emb.astype(np.float32))


def test_converted_logits_match_reference(owl):
    hf, sd, _, out = owl
    bundle = load_pretrained(out)
    cfg = read_config(out)
    assert cfg.adapter.system == "owl" and cfg.adapter.splice.n_tokens == 5  # 4 queries + vit_eos
    assert cfg.vision.layer_norm_eps == 1e-6
    assert set(item_shapes(os.path.join(out, "adapter"))) == {k for k in item_shapes(os.path.join(out, "adapter"))
                                                               if k[0] == "abstractor"}
    ids = bundle.tokenizer.encode(owl_prompt("the cat sat", image=True), bos=True)
    assert ids.count(-1) == 5
    images = _images()
    ours = np.asarray(jax.jit(bundle.model.apply)({"params": bundle.params}, np.asarray([ids], np.int32),
                                                  images[:, None]))
    with torch.no_grad():
        ref = hf(inputs_embeds=_hf_embeds(hf, sd, ids, images)).logits.numpy()
    assert np.abs(ours - ref).max() <= ATOL, np.abs(ours - ref).max()


def test_greedy_generation_from_converted(owl):
    hf, sd, _, out = owl
    bundle = load_pretrained(out)
    text = owl_prompt("a dog ran in the park", image=True)
    images = _images(seed=5)
    got = lav2_jax.generate(bundle, [text], images=[images[0]], max_new_tokens=6, temperature=0.0).token_ids[0]
    ids = bundle.tokenizer.encode(text, bos=True)
    want = _hf_greedy(hf, _hf_embeds(hf, sd, ids, images), 6, bundle.tokenizer.eos_id)
    assert got == want and len(want) > 0, (got, want)


def _hf_greedy(hf, emb, steps: int, eos_id: int) -> list:
    """HF greedy decoding from inputs_embeds [1, T, D]: the new ids (EOS not included)."""
    want = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(hf(inputs_embeds=emb).logits[0, -1].argmax())
            if nxt == eos_id:
                break
            want.append(nxt)
            emb = torch.cat([emb, hf.model.embed_tokens(torch.tensor([[nxt]]))], dim=1)
    return want


def _fails(src_sd, hf, tmp_path, *patterns):
    src = write_released_owl(tmp_path / "bad", hf, src_sd, tokenizer=False)
    with pytest.raises(ValueError) as e:
        convert_mplug_owl(src, str(tmp_path / "out"), weight_dtype="float32")
    for p in patterns:
        assert p in str(e.value), (p, str(e.value))
    assert not os.path.exists(tmp_path / "out")


def test_missing_and_extra_keys(owl, tmp_path):
    hf, sd, _, _ = owl
    key = "abstractor.encoder.layers.1.crossattention.output.mlp.ffn_ln.bias"
    _fails({k: v for k, v in sd.items() if k != key}, hf, tmp_path / "a", key, "missing")
    _fails({k: v for k, v in sd.items() if k != "query_tokens"}, hf, tmp_path / "b", "query_tokens", "missing")
    extra = "abstractor.encoder.layers.0.crossattention.attention.extra.weight"
    _fails({**sd, extra: torch.zeros(2)}, hf, tmp_path / "c", "pytorch_model.bin", extra, "unexpected")


def test_cli_errors_and_clip_layout(owl, tmp_path, capsys):
    hf, sd, src, _ = owl
    bad = tmp_path / "cfg"
    os.makedirs(bad)
    with open(bad / "config.json", "w") as f:
        json.dump({"model_type": "mplug-owl"}, f)
    assert main(["convert", "mplug-owl", "--hf-dir", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "text_config" in capsys.readouterr().err
    clip = hf_clip(VISION.replace(output_dim=24), seed=4)
    torch.save(openai_clip_state_dict(clip), tmp_path / "clip.pt")
    assert main(["convert", "clip", "--clip", str(tmp_path / "clip.pt"), "--clip-heads", str(VISION.heads),
                 "--layout", "owl", "--weight-dtype", "float32", "--out", str(tmp_path / "v")]) == 0
    cfg = read_config(tmp_path / "v")
    assert cfg.model is None and cfg.vision.layer_norm_eps == 1e-6 and cfg.meta["layout"] == "owl"
    converted = read_config(_owl_out(owl))
    shapes = item_shapes(os.path.join(tmp_path / "v", "base"))
    want = {k for k in item_shapes(os.path.join(_owl_out(owl), "base")) if k[0] == "owl_vision"}
    assert set(shapes) == want and converted.vision.width == cfg.vision.width


def _owl_out(owl):
    return owl[3]


def test_encode_images_chat_and_generate_cli(owl, tmp_path, capsys):
    from lav2_jax.data.testing import write_image
    from lav2_jax.inference.chat import ChatSession

    hf, sd, _, out = owl
    bundle = load_pretrained(out)
    images = _images(seed=6)
    tokens = lav2_jax.encode_images(bundle, images)
    assert tokens.shape == (1, 5, LLM.dim)  # queries + vit_eos
    assert np.abs(tokens - ref_abstractor(sd, ref_vision(sd, images))).max() <= ATOL
    session = ChatSession(bundle, image=images[0])
    assert session.prompt_for("hello there") == owl_prompt("hello there", image=True)
    png = write_image(str(tmp_path / "img.png"), VISION.image_size, VISION.image_size, seed=2)
    assert main(["generate", "--ckpt", out, "--prompt", "the cat", "--image", png, "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    capsys.readouterr()


def test_greedy_generation_with_two_images(owl, tmp_path, capsys):
    """A prompt with two `Human: <image>` lines and a [2, H, W, 3] stack: the ids of HF greedy decoding from the
    embeddings with image j's reference visual tokens over the j-th placeholder run; the CLI's repeated `--image`
    renders the same prompt and prints the same text; a chat session puts both image lines first."""
    from lav2_jax.data.testing import write_image
    from lav2_jax.inference.chat import ChatSession
    from lav2_jax.inference.experts import load_for_model

    hf, sd, _, out = owl
    bundle = load_pretrained(out)
    text = owl_prompt("are they the same", image=2)
    assert text == owl_prompt("are they the same", image=True).replace("Human: <image>", "Human: <image>\nHuman: "
                                                                        "<image>")
    pngs = [write_image(str(tmp_path / f"{i}.png"), 40, 36, seed=10 + i) for i in range(2)]
    images = np.stack([load_for_model(bundle, p) for p in pngs])
    got = lav2_jax.generate(bundle, [text], images=[images], max_new_tokens=5, temperature=0.0)
    ids = np.asarray(bundle.tokenizer.encode(text, bos=True))
    assert (ids == -1).sum() == 10
    visual = ref_abstractor(sd, ref_vision(sd, images)).reshape(-1, LLM.dim)  # image 0's tokens, then image 1's
    with torch.no_grad():
        emb = hf.model.embed_tokens(torch.from_numpy(np.where(ids < 0, 0, ids))[None]).double().numpy()
    emb[0, ids < 0] = visual
    want = _hf_greedy(hf, torch.from_numpy(emb.astype(np.float32)), 5, bundle.tokenizer.eos_id)
    assert got.token_ids[0] == want and len(want) > 0, (got.token_ids[0], want)
    capsys.readouterr()
    assert main(["generate", "--ckpt", out, "--prompt", "are they the same", "--image", pngs[0], "--image",
                 pngs[1], "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == got.texts[0] + "\n"
    assert ChatSession(bundle, image=images).prompt_for("are they the same") == text
