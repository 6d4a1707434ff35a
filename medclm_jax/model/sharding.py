"""Device mesh, logical-axis rules and sharded initialization (MaxText-style logical partitioning).

Every parameter carries logical axis names (``nn.with_logical_partitioning``: ``vocab``, ``embed``, ``mlp``,
``q_heads``, ``kv_heads``, ``head_dim``, ``layers``, ``norm``, ``patch``, ``vision_pos``) and activations are
constrained with ``act_*`` names. Rules map those names to the three mesh axes:

- ``data``: plain data parallelism (the batch is split, parameters are replicated);
- ``fsdp``: the batch is split *and* parameters are split along ``embed`` (ZeRO-3 style: gathered per layer);
- ``tensor``: Megatron-style model parallelism over heads, MLP width and vocabulary.

A mesh axis is dropped for a dimension it does not divide (``kv_heads = 1`` under ``tensor = 2`` stays
replicated), so one rule set serves every model size. The mesh uses ``AxisType.Auto`` axes, stated explicitly:
XLA's sharding propagation places everything between the constraints, which is what linen's
``with_logical_constraint`` expects (``Explicit`` axes would make every op's output sharding part of its type).

Usage (never ``pjit`` or ``with mesh:``)::

    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    params = sharded_init(model.init, rng, dummy_batch, mesh=mesh)
    with mesh_rules(mesh):                  # jax.set_mesh + linen's logical rules, for tracing the step
        logits = jax.jit(model.apply)(params, shard_batch(host_batch, mesh))
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, "str | tuple[str, ...] | None"]]

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("act_batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_len", None),
    ("act_embed", None),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("patch", None),
    ("vision_pos", None),
)


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """Builds a device mesh with ``data``, ``fsdp`` and ``tensor`` axes.

    Args:
      shape: axis name -> size; one size may be -1 ("all remaining devices"). Standard axes left out get size 1,
        so the default rules always resolve. Default ``{'data': -1, 'fsdp': 1, 'tensor': 1}``.
      devices: devices to use (default: all of ``jax.devices()``).

    Returns:
      A ``jax.sharding.Mesh`` whose axes are all ``AxisType.Auto``.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = dict({"data": -1} if shape is None else shape)
    for axis in MESH_AXES:
        shape.setdefault(axis, 1)
    free = [a for a, n in shape.items() if n == -1]
    if len(free) > 1 or any(n == 0 or n < -1 for n in shape.values()):
        raise ValueError(f"mesh shape {shape}: sizes must be positive, with at most one -1")
    fixed = math.prod(n for n in shape.values() if n != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(f"mesh shape {shape}: {len(devices)} devices are not divisible by {fixed}")
        shape[free[0]] = len(devices) // fixed
    if math.prod(shape.values()) != len(devices):
        raise ValueError(f"mesh shape {shape} needs {math.prod(shape.values())} devices, got {len(devices)}; "
                         f"use -1 for one axis to take all devices")
    names = tuple(shape)
    return jax.make_mesh(tuple(shape.values()), names, axis_types=(AxisType.Auto,) * len(names),
                         devices=devices)


def rules_for_mesh(rules: Rules, mesh: Mesh) -> tuple:
    """The rules with mesh axes that ``mesh`` lacks removed (so linen's constraints never name a missing axis)."""
    out = []
    for name, axes in rules:
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        kept = tuple(a for a in axes if a in mesh.shape)
        out.append((name, kept[0] if len(kept) == 1 else (kept or None)))
    return tuple(out)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh_shape: Mapping[str, int],
                    rules: Rules = DEFAULT_RULES) -> PartitionSpec:
    """Turns one array's logical axis names into a ``PartitionSpec`` for a mesh of ``mesh_shape``.

    For each dimension the first rule naming its logical axis gives candidate mesh axes; a candidate is kept
    only if it exists in the mesh with size > 1, is not already used by an earlier dimension, and (together
    with the axes kept before it) divides the dimension. Names without a rule are replicated.

    Args:
      names: one logical name (or ``None``) per dimension.
      shape: the array's shape.
      mesh_shape: mesh axis name -> size (``mesh.shape``).
      rules: (logical name, mesh axis | tuple of mesh axes | None) pairs.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    table: dict[str, tuple[str, ...]] = {}
    for name, axes in rules:
        if name not in table:
            table[name] = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        kept, prod = [], 1
        for axis in table.get(name, ()) if name is not None else ():
            n = mesh_shape.get(axis, 1)
            if n > 1 and axis not in used and size % (prod * n) == 0:
                kept.append(axis)
                prod *= n
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def logical_to_sharding(abstract_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """Shardings for a tree of (boxed) arrays, e.g. ``jax.eval_shape(model.init, ...)``.

    Args:
      abstract_tree: pytree whose leaves are ``nn.LogicallyPartitioned`` boxes (their ``names`` are the logical
        axes) or plain arrays / ``ShapeDtypeStruct`` (replicated).
      mesh: the device mesh.
      rules: logical-to-mesh rules.

    Returns:
      The same tree with every box or array replaced by a ``NamedSharding``; it matches the *unboxed* tree.
    """
    def one(x):
        names = getattr(x, "names", None) if _is_box(x) else None
        if names is None:
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, logical_to_spec(names, x.value.shape, mesh.shape, rules))
    return jax.tree.map(one, abstract_tree, is_leaf=_is_box)


def unbox(tree: Any) -> Any:
    """Removes partitioning boxes, leaving plain arrays (without applying any sharding constraint)."""
    return jax.tree.map(lambda x: x.value if _is_box(x) else x, tree, is_leaf=_is_box)


@contextlib.contextmanager
def mesh_rules(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Context for tracing model code: ``jax.set_mesh(mesh)`` plus linen's logical axis rules.

    Inside it, the model's ``nn.with_logical_constraint`` calls become sharding constraints on ``mesh``.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_for_mesh(rules, mesh)):
        yield


def sharded_init(init_fn: Callable[..., Any], *args: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """Initializes a model directly into its shardings, so no host ever holds the whole model.

    ``jax.eval_shape`` gives the abstract (boxed) variables at no cost; their logical names give shardings;
    a ``jax.jit`` of ``init_fn`` with those ``out_shardings`` then materializes each shard on its device. With
    JAX's partitionable threefry the values equal an unsharded init with the same key.

    Args:
      init_fn: e.g. ``model.init``; called as ``init_fn(*args)``.
      *args: its arguments (PRNG key, dummy inputs).
      mesh: the device mesh.
      rules: logical-to-mesh rules.

    Returns:
      The unboxed variables (e.g. ``{'params': ...}``) as sharded ``jax.Array``s; ``x.sharding`` gives each one's
      ``NamedSharding`` for the train step's ``in_shardings``.
    """
    with mesh_rules(mesh, rules):
        abstract = jax.eval_shape(init_fn, *args)
        shardings = logical_to_sharding(abstract, mesh, rules)
        return jax.jit(lambda *a: unbox(init_fn(*a)), out_shardings=shardings)(*args)


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a batch array: leading dimension over the ``batch`` rule's axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(dict(rules_for_mesh(rules, mesh)).get("batch")))


def shard_batch(batch: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """Assembles this host's part of the batch into global arrays split over the batch axes.

    Each process passes only the rows it loaded; the global batch is the concatenation over processes in
    process order (``jax.make_array_from_process_local_data``).

    Args:
      batch: pytree of host arrays, each ``[B_local, ...]``.
      mesh: the device mesh.
      rules: the ``batch`` rule names the mesh axes that split the leading dimension.

    Returns:
      The same tree of global ``jax.Array``s ``[B_local * process_count, ...]``.
    """
    axes = dict(rules_for_mesh(rules, mesh)).get("batch")
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    splits = math.prod(mesh.shape[a] for a in axes)

    def one(path, x):
        x = np.asarray(x)
        key = jax.tree_util.keystr(path)
        if x.ndim == 0:
            raise ValueError(f"batch entry {key} is a scalar; every batch entry needs a leading batch dimension")
        global_rows = x.shape[0] * jax.process_count()
        if global_rows % splits:
            raise ValueError(f"batch entry {key} has {global_rows} rows in all, not divisible by the {splits} "
                             f"batch shards of mesh axes {axes}; make the global batch size a multiple of {splits}")
        sharding = batch_sharding(mesh, rules)
        return jax.make_array_from_process_local_data(sharding, x, (global_rows, *x.shape[1:]))
    return jax.tree_util.tree_map_with_path(one, batch)
