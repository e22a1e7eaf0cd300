"""Ahead-of-time compilation for TPU topologies we can only compile for (docs/design.md §8.2, MaxText-style).

With `libtpu` installed (extra `tpu`), `jax.experimental.topologies.get_topology_desc` describes a TPU slice on a
CPU host (`JAX_PLATFORMS=cpu` is fine); a program lowered with shardings over that slice's devices compiles to TPU
code whose `memory_analysis()` gives per-chip bytes and `cost_analysis()` FLOPs — before renting the pod.
"""

from __future__ import annotations

import dataclasses
import os
import runpy
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lav2_jax.core.flops import hbm_gib, hlo_flops
from lav2_jax.core.sharding import LOGICAL_RULES, MESH_AXES, logical_shardings, make_mesh
from lav2_jax.model.factory import abstract_params, build_model, dummy_inputs
from lav2_jax.model.flops import analytic_train_flops
from lav2_jax.train import state as state_lib
from lav2_jax.train.state import model_configs
from lav2_jax.train.step import batch_sharding, recipe_streams

# libtpu looks for a TPU VM's metadata at start-up; on a CPU host these keep it quiet and offline (and let several
# compile-only processes share the host: none of them opens a chip).
_LIBTPU_ENV = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-8",
               "TPU_WORKER_HOSTNAMES": "localhost",
               "TPU_WORKER_ID": "0"}


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """Per-chip figures of one compiled program."""

    topology: str
    num_devices: int
    mesh: dict
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    generated_code_bytes: int
    xla_flops: float  # XLA's cost analysis: a scanned (while-loop) body is counted once, not per layer
    compiled_flops: float = 0.0  # matmul FLOPs of the whole program, all chips, loops in full (lav2_jax.core.flops)
    pallas_calls: int = 0  # Pallas kernel launches, whose FLOPs compiled_flops cannot see
    devices_per_chip: int = 1  # v4 topologies describe each chip's 2 TensorCores as 2 devices sharing its HBM
    guessed_loops: int = 0  # while loops whose counter lav2_jax.core.flops did not recognise (trips read off the bound)

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries − donated (aliased) buffers: the HBM a device needs for this program
        (the byte fields are per device; a chip holds `devices_per_chip` of them)."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    def as_dict(self) -> dict:
        hbm = hbm_gib(self.topology)
        peak = self.peak_bytes * self.devices_per_chip / 2 ** 30
        return dict(dataclasses.asdict(self), peak_bytes=self.peak_bytes, peak_gib_per_chip=peak,
                    hbm_fraction=peak / hbm if hbm else None)


def topology_devices(topology: str, platform: str = "tpu") -> list:
    """The devices of a named topology, e.g. `v5e:2x4`, `v4:2x2x2`, `v5p:2x2x4`. Needs libtpu for TPUs."""
    for key, value in _LIBTPU_ENV.items():
        os.environ.setdefault(key, value)
    try:
        desc = topologies.get_topology_desc(platform=platform, topology_name=topology)
    except Exception as e:  # libtpu missing or an unknown topology name: say which
        raise ValueError(f"cannot describe {platform} topology {topology!r} ({e}); is libtpu installed "
                         "(pip install -e '.[tpu]')?") from e
    return list(desc.devices)


def topology_mesh(topology: str, data: int = 1, fsdp: int = -1, tensor: int = 1):
    """A (data, fsdp, tensor) mesh over a topology's devices (one size may be -1 = fill)."""
    return make_mesh(data, fsdp, tensor, devices=topology_devices(topology))


def compile_report(topology: str, mesh, compiled) -> CompileReport:
    counted = hlo_flops(compiled.as_text())
    n = int(np.prod(list(mesh.shape.values())))
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return CompileReport(
        topology=topology, num_devices=int(np.prod(list(mesh.shape.values()))),
        mesh={a: int(mesh.shape[a]) for a in MESH_AXES},
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
        generated_code_bytes=int(mem.generated_code_size_in_bytes), xla_flops=float(cost.get("flops", 0.0)),
        compiled_flops=counted["flops"] * n, pallas_calls=counted["custom_calls"],
        devices_per_chip=len({getattr(d, "core_on_chip", 0) for d in mesh.devices.flat}),
        guessed_loops=len(counted["guessed_loops"]))


def lower_and_compile(fn: Callable, args: tuple, in_shardings: Any, out_shardings: Any = None, mesh=None,
                      donate_argnums: tuple = ()):
    """`jax.jit(fn).lower(*abstract args).compile()` under the logical-axis rules and `mesh`."""
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        return jitted.lower(*args).compile()


def compile_forward(model, mesh, batch: int, seq: int):
    """Compiles the model's forward pass (logits) for `batch` × `seq` tokens (+ images for visual adapters)."""
    boxed = abstract_params(model, boxed=True)
    param_shardings = logical_shardings(boxed, mesh)
    params = abstract_params(model)
    inputs = dummy_inputs(model, batch, seq)
    batch_axes = ("data", "fsdp")
    in_sh = {k: NamedSharding(mesh, P(batch_axes, *([None] * (len(v.shape) - 1)))) for k, v in inputs.items()}
    inputs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=in_sh[k]) for k, v in inputs.items()}

    def forward(p, inputs):
        inputs = dict(inputs)
        return model.apply({"params": p}, inputs.pop("tokens"), **inputs).astype(jnp.float32)

    return lower_and_compile(forward, (params, inputs), (param_shardings, in_sh),
                             NamedSharding(mesh, P(batch_axes, None, "tensor")), mesh)


def load_config(path: str):
    """`get_config()` of an ml_collections config file (`configs/*.py`)."""
    try:
        return runpy.run_path(path)["get_config"]()
    except FileNotFoundError:
        raise ValueError(f"config file {path} not found") from None
    except KeyError:
        raise ValueError(f"config file {path} defines no get_config()") from None


def abstract_batch(setup, config) -> dict:
    """Abstract global batches per stream, as the data pipeline delivers them (`lav2_jax.data.pipeline`)."""
    mesh, batch = setup.mesh, {}
    for stream in setup.streams:
        rows = setup.global_batch[stream.batch_key]
        synthetic = config.data.get("source") == "synthetic"
        length = int(config.data.seq_len if synthetic else config.data[stream.batch_key].max_len)
        shapes = {"tokens": ((rows, length), jnp.int32), "targets": ((rows, length), jnp.int32),
                  "loss_mask": ((rows, length), jnp.float32)}
        packed = not synthetic and bool(config.data.get("packing", False))  # lav2_jax.data.packing
        if packed:
            shapes.update(segment_ids=((rows, length), jnp.int32), positions=((rows, length), jnp.int32))
        if setup.model.vision is not None and stream.batch_key != "instruction":
            size = setup.model.vision.image_size
            slots = (int(config.data[stream.batch_key].get("max_segments", 8)),) if packed else ()
            shapes.update(images=((rows, *slots, size, size, 3), jnp.float32),
                          has_image=((rows, *slots), jnp.bool_))
        batch[stream.batch_key] = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, len(shape)))
                                   for k, (shape, dtype) in shapes.items()}
    return batch


def compile_train_step(config, mesh):
    """Compiles the training step a `lav2 train` config describes (recipe, groups, optimizer, accumulation, remat,
    batch sizes and `max_len` per stream) on `mesh`, allocating nothing."""
    setup, state = state_lib.build(config, mesh, abstract=True)
    return setup.train_step.lower(state, setup.frozen, abstract_batch(setup, config)).compile()


def train_step_analytic(config) -> dict:
    """Analytic model FLOPs (`lav2_jax.model.flops.analytic_train_flops`) of the step a training config describes, with
    the batch shapes `abstract_batch` gives it (packed image rows: every image slot counts as an image)."""
    model = build_model(*model_configs(config.model))
    synthetic = config.data.get("source") == "synthetic"
    packed = not synthetic and bool(config.data.get("packing", False))
    shapes: dict = {"images": {}}
    for stream in recipe_streams(config.recipe):
        key = stream.batch_key
        rows = int(config.batch[key])
        shapes[key] = (rows, int(config.data.seq_len if synthetic else config.data[key].max_len))
        if model.vision is not None and key != "instruction":
            shapes["images"][key] = rows * (int(config.data[key].get("max_segments", 8)) if packed else 1)
    return analytic_train_flops(model, shapes)
