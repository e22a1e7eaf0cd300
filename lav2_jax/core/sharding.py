"""The one table from logical axis names to mesh axes (docs/design.md §8.1).

Modules name axes (`lav2_jax.model.common`); only this table knows the physical mesh `(data, fsdp, tensor)`.
A pod configuration changes these rules and the mesh shape, never a module.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None):
    """A `jax.sharding.Mesh` with axes (data, fsdp, tensor); one size may be -1 (= fill with the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"make_mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"make_mesh: {len(devices)} devices do not divide by {dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"make_mesh: mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_shardings(boxed_tree, mesh, rules=LOGICAL_RULES):
    """NamedShardings for a tree of flax `LogicallyPartitioned` boxes (e.g. `abstract_params(model, boxed=True)`).

    Leaves without logical names are replicated. A mesh axis that does not divide the array's dimension is dropped
    for that dimension (replicated) rather than failing, so tiny test models fit any mesh.
    """
    specs = nn.get_partition_spec(boxed_tree)
    shapes = nn.unbox(boxed_tree)

    def to_sharding(spec, shape):
        if not isinstance(spec, PartitionSpec):
            spec = PartitionSpec()
        mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if len(spec) else PartitionSpec()
        fixed = []
        for dim, axes in zip(shape.shape, tuple(mesh_spec) + (None,) * (len(shape.shape) - len(mesh_spec))):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            size = 1
            for n in names:
                size *= mesh.shape[n]
            fixed.append(axes if size > 1 and dim % size == 0 else None)
        return NamedSharding(mesh, PartitionSpec(*fixed))

    return jax.tree_util.tree_map(to_sharding, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))
