"""The one table from logical axis names to mesh axes (DESIGN.md §5).

Modules name axes (`lav2_jax.model.common`); only this table knows the physical mesh `(data, fsdp, tensor)`.
A pod configuration changes these rules and the mesh shape, never a module.
"""

from __future__ import annotations

MESH_AXES = ("data", "fsdp", "tensor")

# Ordered: flax uses the first rule whose mesh axes are still free for a given array.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters: frozen weights FSDP over embed, tensor-parallel over heads / mlp / vocab
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("prompt", None),
    ("lora", None),
    ("norm", None),
    ("adapter_embed", None),
    # vision tower and connector
    ("vis_embed", "fsdp"),
    ("vis_mlp", "tensor"),
    ("vis_heads", "tensor"),
    ("vis_tokens", None),
    ("vis_channels", None),
    ("vis_patch", None),
)
