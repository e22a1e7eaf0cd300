"""The mutants of `make mutants`: small deliberate bugs, each with the tests that claim to catch it.

A `Mutant` names one file under the repository root, one or more (`old`, `new`) edits of it (each `old` must occur
exactly once in the unmutated file, so a later move of the code makes the entry fail loudly instead of silently
testing nothing), a short id, what the bug is, and the test files / node ids that claim to cover it. `run.py`
applies one mutant at a time to a temporary copy of the checkout and runs only those tests.

Adding a feature: add a mutant for the bug its tests are meant to catch, with those tests as `tests`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # relative to the repository root
    old: str  # exact snippet, occurring once in `file`
    new: str
    description: str
    tests: tuple[str, ...]  # test files or node ids (relative to the repository root)
    more: tuple[tuple[str, str], ...] = ()  # further (old, new) edits of the same file, applied together

    @property
    def edits(self) -> tuple[tuple[str, str], ...]:
        return ((self.old, self.new),) + self.more


MUTANTS: tuple[Mutant, ...] = (
    # ---- training: disjoint groups, frozen base, zero-init gates -------------------------------------------------
    Mutant(
        "step-groups-summed", "lav2_jax/train/step.py",
        "        active, rest = pg.split(params, labels, stream.groups)\n",
        "        active, rest = pg.split(params, labels, tuple(g for st in streams for g in st.groups))\n",
        "joint step differentiates every group from both streams and sums the gradients",
        ("tests/test_train_step.py",),
        more=(("        grads = pg.merge(*grads_parts)\n",
               "        grads = jax.tree_util.tree_map(lambda *g: sum(g), *grads_parts)\n"),)),
    Mutant(
        "paper-joint-kernels-trainable", "lav2_jax/systems/lav2/recipes.py",
        '           + LANGUAGE_ADAPTERS, "paper §4.2: visual parts caption, language adapters instruction", norm_tuning=True),',
        '           + LANGUAGE_ADAPTERS + ((LLM_PATTERN, I),), "paper §4.2: visual parts caption, language adapters '
        'instruction", norm_tuning=True),',
        "every LLaMA kernel (and embedding, head) trainable in the paper-joint recipe",
        ("tests/test_model_gradients.py",),
        more=(("from lav2_jax.core.param_groups import C, I, LINEAR_ADAPTER_PATTERN,",
               "from lav2_jax.core.param_groups import LLM_PATTERN, C, I, LINEAR_ADAPTER_PATTERN,"),)),
    Mutant(
        "recipe-last-match-wins", "lav2_jax/core/param_groups.py",
        "    for pattern, group in _compiled(r.rules):\n        if pattern.search(path):\n            return group\n",
        "    for pattern, group in reversed(_compiled(r.rules)):\n        if pattern.search(path):\n"
        "            return group\n",
        "recipe rules: the last matching rule decides instead of the first (llava-stage2's prompt-gate guard lost)",
        ("tests/test_param_groups.py",)),
    Mutant(
        "system-modules-ignored", "lav2_jax/core/param_groups.py",
        "    return dataclasses.replace(r, rules=r.rules + modules, system_modules=False)\n",
        "    return dataclasses.replace(r, rules=r.rules + modules[:3], system_modules=False)\n",
        "all-adapters takes only the built-in systems' modules: a fourth system's projector leaves the adapter item",
        ("tests/test_fourth_system.py",)),
    Mutant(
        "front-end-of-wrong-system", "lav2_jax/model/factory.py",
        "    front_end = system.visual_front_end(adapter)\n",
        "    front_end = registry.get(\"llava\").visual_front_end(adapter) if adapter.splice is not None else "
        "system.visual_front_end(adapter)\n",
        "build_model gives every spliced system LLaVA's visual front-end (the registry lookup by the adapter's system "
        "ignored)",
        ("tests/test_owl_model.py", "tests/test_fourth_system.py")),
    Mutant(
        "adapter-gate-nonzero-init", "lav2_jax/model/attention.py",
        'gate = trainable_param(self, "gate", nn.initializers.zeros, (N,), (None,))',
        'gate = trainable_param(self, "gate", nn.initializers.constant(0.02), (N,), (None,))',
        "adapter-prompt gates initialised to 0.02 instead of zero (adapted model != base at init)",
        ("tests/test_model_identity.py",)),
    Mutant(
        "visual-gate-nonzero-init", "lav2_jax/model/transformer.py",
        'gate = trainable_param(self, "visual_gate", nn.initializers.zeros,',
        'gate = trainable_param(self, "visual_gate", nn.initializers.constant(0.02),',
        "early-fusion visual-prompt gates initialised to 0.02 instead of zero",
        ("tests/test_model_identity.py",)),
    # ---- checkpoint conversion: RoPE layouts ---------------------------------------------------------------------
    Mutant(
        "rope-both-identity", "lav2_jax/checkpoint/convert/ops.py",
        "    return w.reshape((n_heads, hd // 2, 2) + rest).swapaxes(1, 2).reshape(w.shape)\n",
        "    return w\n",
        "both RoPE permutations (meta_to_half and half_to_meta) are the identity",
        ("tests/test_convert_llama.py",),
        more=(("    return w.reshape((n_heads, 2, hd // 2) + rest).swapaxes(1, 2).reshape(w.shape)\n",
               "    return w\n"),)),
    Mutant(
        "rope-meta-to-half-identity", "lav2_jax/checkpoint/convert/ops.py",
        "    return w.reshape((n_heads, hd // 2, 2) + rest).swapaxes(1, 2).reshape(w.shape)\n",
        "    return w\n",
        "meta_to_half (Meta interleaved -> half-split rows of wq/wk) is the identity; half_to_meta unchanged",
        ("tests/test_convert_llama.py",)),
    # ---- attention masks, packed segments, splice ----------------------------------------------------------------
    Mutant(
        "causal-mask-off-by-one", "lav2_jax/model/segments.py",
        "    mask = k_pos[:, None, :] <= q_pos[:, :, None]\n",
        "    mask = k_pos[:, None, :] <= q_pos[:, :, None] + 1\n",
        "causal mask off by one: every query also sees the next token",
        ("tests/test_blocked_attention.py",)),
    Mutant(
        "segment-mask-leak", "lav2_jax/model/segments.py",
        "        mask = mask & (k_seg[:, None, :] == q_seg[:, :, None])\n",
        "        mask = mask & (k_seg[:, None, :] <= q_seg[:, :, None])\n",
        "segment mask leaks across segments: a query also sees earlier samples of its packed row",
        ("tests/test_blocked_attention.py",)),
    Mutant(
        "segment-mask-dropped", "lav2_jax/model/segments.py",
        "        mask = mask & (k_seg[:, None, :] == q_seg[:, :, None])\n",
        "        mask = mask & (k_seg[:, None, :] >= 0)\n",
        "segment masking: packed rows attend causally across all their samples (segment ids ignored)",
        ("tests/test_packing.py",)),
    Mutant(
        "segment-positions-no-restart", "lav2_jax/model/segments.py",
        "    return idx - first\n",
        "    return idx\n",
        "segment masking: RoPE positions do not restart at each packed sample (they count along the row)",
        ("tests/test_packing.py",)),
    Mutant(
        "segment-prompt-leak", "lav2_jax/model/segments.py",
        "    return (q_seg[:, :, None] == p_seg[:, None, :])[:, None, None]\n",
        "    return (q_seg[:, :, None] >= p_seg[:, None, :])[:, None, None]\n",
        "segment masking: a packed sample also attends to the visual prompts of earlier samples' images",
        ("tests/test_packing.py",)),
    Mutant(
        "splice-off-by-one", "lav2_jax/model/splice.py",
        "index = jnp.clip(jnp.cumsum(is_img.astype(jnp.int32), axis=1) - 1, 0, N * n_tok - 1)",
        "index = jnp.clip(jnp.cumsum(is_img.astype(jnp.int32), axis=1), 0, N * n_tok - 1)",
        "splice placement off by one: placeholder k gets visual token k+1 (the last one repeated)",
        ("tests/test_splice.py",)),
    # ---- vision: connector / CLIP numerics -----------------------------------------------------------------------
    Mutant(
        "connector-ln-eps", "lav2_jax/systems/lav2/connector.py",
        "CONNECTOR_LN_EPS = 1e-5\n",
        "CONNECTOR_LN_EPS = 1e-6\n",
        "connector LayerNorm eps 1e-6 instead of the released 1e-5",
        ("tests/test_connector.py",)),
    Mutant(
        "layernorm-eps-bf16-only", "lav2_jax/model/norms.py",
        "        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)",
        "        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps + (3e-3 if x.dtype == jnp.bfloat16 else 0.0))",
        "LayerNorm eps 3e-3 too large on the bfloat16 path only (max error 0.075: inside the old atol 0.1 / 0.15)",
        ("tests/test_clip.py", "tests/test_connector.py")),
    # ---- LLaVA template, sampling --------------------------------------------------------------------------------
    Mutant(
        "vicuna-eos-unmasked", "lav2_jax/systems/llava/conversation.py",
        "                segs.append((EOS, True))\n",
        "                segs.append((EOS, False))\n",
        "vicuna_v1 / llava_v1: the reply's </s> carries no loss",
        ("tests/test_llava_templates.py",)),
    Mutant(
        "top-p-drops-crossing-token", "lav2_jax/inference/sampling.py",
        "    drop = (jnp.cumsum(p_sorted, axis=-1) - p_sorted) > top_p\n",
        "    drop = jnp.cumsum(p_sorted, axis=-1) > top_p\n",
        "top-p drops the token whose cumulative probability crosses top_p (the release keeps it)",
        ("tests/test_generate_sampling.py",)),
    # ---- experts, CLI, demo --------------------------------------------------------------------------------------
    Mutant(
        "caption-expert-dropped", "lav2_jax/cli/generate.py",
        "                text = expert_prompt(prompt, image, self.expert)\n",
        "                text = prompts.instruction_prompt(self.bundle.model.adapter, prompt, None, True)\n",
        "lav2 generate --expert caption: the caption never reaches the prompt's Input field",
        ("tests/test_cli_generate.py",)),
    Mutant(
        "ocr-first-line-only", "lav2_jax/inference/experts.py",
        'return re.sub(r"\\s+", " ", self._ocr.image_to_string(img, lang=self.lang)).strip()',
        'return re.sub(r"\\s+", " ", self._ocr.image_to_string(img, lang=self.lang).strip().split("\\n")[0])',
        "OCR expert keeps only the first line of the text Tesseract found",
        ("tests/test_generate_experts.py",)),
    Mutant(
        "demo-figure-losses-swapped", "lav2_jax/demo/report.py",
        '    for key, label in (("loss/caption", "caption batches → caption group"),\n'
        '                       ("loss/instruction", "instruction batches → instruction group")):\n',
        '    for key, label in (("loss/instruction", "caption batches → caption group"),\n'
        '                       ("loss/caption", "instruction batches → instruction group")):\n',
        "demo report.png: the two loss curves carry each other's labels",
        ("tests/test_demo_report.py",)),
    # ---- evaluation ----------------------------------------------------------------------------------------------
    Mutant(
        "mme-acc-plus-any", "lav2_jax/eval/mme.py",
        "acc_plus = sum(all(oks) for oks in images.values()) / len(images)",
        "acc_plus = sum(any(oks) for oks in images.values()) / len(images)",
        "MME acc+ counts an image when either question is right (both must be)",
        ("tests/test_eval_scoring.py",)),
    Mutant(
        "ptb-python-clitic-s", "lav2_jax/eval/caption_metrics.py",
        """_CLITIC = re.compile(r"^(.+?)('s|'re|'ve|'ll|'d|'m)$")""",
        """_CLITIC = re.compile(r"^(.+?)('re|'ve|'ll|'d|'m)$")""",
        "Python PTB-like tokenizer no longer splits 's (dog's, it's stay one token)",
        ("tests/test_eval_scoring.py",)),
    Mutant(
        "eval-skip-reason-path", "lav2_jax/eval/runner.py",
        "str(e).replace(path, '').strip(': ')",
        "str(e).strip(': ')",
        "eval skip reason of an unreadable image keeps the file path (by_reason splits per file)",
        ("tests/test_eval_cli.py",)),
    Mutant(
        "loss-placeholder-target-nan", "lav2_jax/train/loss.py",
        'jnp.take_along_axis(logits, targets[..., None], axis=-1, mode="clip")[..., 0]',
        "jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]",
        "a masked target past the vocabulary (LLaVA's placeholder 32000) gathers NaN: the stream's loss turns NaN",
        ("tests/test_loss_positions.py",)),
    # ---- data build ----------------------------------------------------------------------------------------------
    Mutant(
        "data-build-decodes-huge-image", "lav2_jax/data/images.py",
        '            warnings.simplefilter("error", Image.DecompressionBombWarning)\n'
        "            img = Image.open(io.BytesIO(data))\n"
        "            img.load()  # forces a full decode: truncated data raises here\n",
        '            warnings.simplefilter("ignore", Image.DecompressionBombWarning)\n'
        "            img = Image.open(io.BytesIO(data))\n"
        "            img.load()  # forces a full decode: truncated data raises here\n"
        "            if img.width * img.height > Image.MAX_IMAGE_PIXELS:\n"
        '                raise Image.DecompressionBombError(f"{img.width * img.height} pixels")\n',
        "data build memory: an over-limit image is fully decoded (100 MB of pixels) before it is refused",
        ("tests/test_faults_data.py",)),
)


def by_id() -> dict[str, Mutant]:
    out: dict[str, Mutant] = {}
    for m in MUTANTS:
        if m.id in out:
            raise ValueError(f"duplicate mutant id {m.id!r}")
        out[m.id] = m
    return out
