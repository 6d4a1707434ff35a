"""Orbax checkpoints: a model's weights with its metadata, and the rolling checkpoints of a training run.

Two layouts, both plain Orbax (so other Orbax users can read them):

- a **model checkpoint** (``medclm convert`` output, the weights a run starts from or exports)::

      DIR/params/      StandardSave of the parameter tree
      DIR/metadata/    JsonSave: model config name/fields, provenance, anything JSON
      DIR/tokenizer.json, tokenizer_config.json   (written beside it by the tokenizer code)

  The readers also accept a folder whose ``params/`` was written on its own by ``ocp.StandardCheckpointer``
  with a ``model_config.json`` beside it (the layout ``medclm_jax.model.convert.save_checkpoint`` writes); its
  JSON is then the metadata.

- a **training run** (:class:`TrainCheckpoints`)::

      WORKDIR/<step>/params, opt_state   StandardSave (sharded arrays written by every host in parallel)
      WORKDIR/<step>/state               JsonSave: curriculum scheduler, data-iterator position, RNG seeds, ...

Restores go straight into the requested shardings (each host reads only its shards), so a model too big for
one host's memory loads onto a device mesh, and dtypes can change on the way (fp32 file -> bf16 params).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

PARAMS, METADATA, OPT_STATE, STATE = "params", "metadata", "opt_state", "state"
_BYTES_TAG = "__bytes_b64__"


def _checkpointer() -> ocp.Checkpointer:
    """A synchronous composite checkpointer that knows both items' handlers before anything is saved
    (without the registry a fresh checkpointer cannot read an item's metadata)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, handler, save, restore in (
            (PARAMS, ocp.StandardCheckpointHandler, ocp.args.StandardSave, ocp.args.StandardRestore),
            (METADATA, ocp.JsonCheckpointHandler, ocp.args.JsonSave, ocp.args.JsonRestore)):
        instance = handler()
        registry.add(item, save, instance)
        registry.add(item, restore, instance)
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=registry))


def save_params(directory: str | os.PathLike, params: Any, metadata: Mapping[str, Any] | None = None, *,
                overwrite: bool = False) -> None:
    """Writes a model checkpoint: the parameter tree and a JSON metadata record.

    Args:
      directory: target folder; must not exist yet unless ``overwrite``.
      params: pytree of ``jax.Array`` (possibly sharded over many hosts) or numpy arrays.
      metadata: JSON-serializable dict (model config, source checkpoint, ...).
      overwrite: replace an existing checkpoint at ``directory``.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"{directory}: a checkpoint already exists here; pass overwrite=True or choose "
                              f"another folder")
    _checkpointer().save(directory, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        METADATA: ocp.args.JsonSave(dict(metadata or {})),
    }), force=overwrite)


_STANDALONE_CONFIG = "model_config.json"


def _is_composite(directory: str) -> bool:
    """True for save_params' layout (one Orbax checkpoint holding both items)."""
    return os.path.isfile(os.path.join(directory, "_CHECKPOINT_METADATA"))


def _require_checkpoint(directory: str, item: str) -> str:
    path = os.path.join(directory, item)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{directory}: not a model checkpoint (no '{item}' folder); expected the output "
                                f"of save_params or `medclm convert --from-hf`")
    return path


def load_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata written by :func:`save_params` (or a standalone ``model_config.json``)."""
    directory = os.path.abspath(os.fspath(directory))
    standalone = os.path.join(directory, _STANDALONE_CONFIG)
    if not _is_composite(directory) and os.path.isfile(standalone):
        with open(standalone, encoding="utf-8") as f:
            return json.load(f)
    _require_checkpoint(directory, METADATA)
    restored = _checkpointer().restore(directory, args=ocp.args.Composite(**{METADATA: ocp.args.JsonRestore()}))
    return dict(restored[METADATA])


def params_shapes(directory: str | os.PathLike) -> Any:
    """Tree of ``jax.ShapeDtypeStruct`` (no sharding) describing the saved parameters, read without loading."""
    directory = os.path.abspath(os.fspath(directory))
    path = _require_checkpoint(directory, PARAMS)
    if _is_composite(directory):
        tree = _checkpointer().metadata(directory).item_metadata[PARAMS].tree
    else:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.metadata(path).item_metadata.tree
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree,
                        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` targets: shardings from ``shardings`` (a tree like ``abstract``, or one for all),
    else the leaf's own, else the first local device."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(a, s=None):
        s = s or getattr(a, "sharding", None) or default
        return jax.ShapeDtypeStruct(tuple(a.shape), a.dtype, sharding=s)
    if shardings is None:
        return jax.tree.map(target, abstract)
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda a: target(a, shardings), abstract)
    return jax.tree.map(target, abstract, shardings)


def load_params(directory: str | os.PathLike, abstract_params: Any = None, shardings: Any = None) -> Any:
    """Reads the parameters of a model checkpoint straight into their shardings.

    Args:
      directory: a folder written by :func:`save_params`.
      abstract_params: tree of ``jax.ShapeDtypeStruct`` (or arrays) giving the wanted structure and dtypes,
        e.g. from ``jax.eval_shape``; leaves may carry a ``sharding``. Default: the saved shapes and dtypes.
      shardings: tree of ``jax.sharding.Sharding`` matching the params, or one sharding for every leaf; overrides
        shardings on ``abstract_params``. Leaves left without one go to the first local device.

    Returns:
      The parameter tree of ``jax.Array``.
    """
    directory = os.path.abspath(os.fspath(directory))
    saved = params_shapes(directory)
    if abstract_params is None:
        abstract_params = saved
    else:
        _check_structure(directory, saved, abstract_params)
    target = _with_shardings(abstract_params, shardings)
    if not _is_composite(directory):
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(os.path.join(directory, PARAMS), target)
    restored = _checkpointer().restore(
        directory, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(target)}))
    return restored[PARAMS]


def _check_structure(directory: str, saved: Any, wanted: Any) -> None:
    """Names the first parameter that is missing, extra or of a different shape (Orbax's errors do not)."""
    saved_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    wanted_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(wanted)[0]}
    for key, want in wanted_flat.items():
        if key not in saved_flat:
            raise ValueError(f"{directory}: parameter {key} (shape {tuple(want.shape)}) is not in the checkpoint")
        if tuple(saved_flat[key].shape) != tuple(want.shape):
            raise ValueError(f"{directory}: parameter {key} has shape {tuple(saved_flat[key].shape)} in the "
                             f"checkpoint but the model expects {tuple(want.shape)}")
    extra = sorted(set(saved_flat) - set(wanted_flat))
    if extra:
        raise ValueError(f"{directory}: the checkpoint holds parameters the model does not have: {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''}")


def _to_json(value: Any) -> Any:
    """JSON-safe copy: ``bytes`` (e.g. a Grain iterator state) become tagged base64 strings."""
    if isinstance(value, bytes):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_BYTES_TAG}:
            return base64.b64decode(value[_BYTES_TAG])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class TrainCheckpoints:
    """Rolling checkpoints of a training run: step, params, optimizer state and JSON state.

    A thin wrapper over ``ocp.CheckpointManager`` that fixes the item names and the policies: keep the latest
    ``max_to_keep`` steps (plus every ``keep_every``-th step, if set), save asynchronously (training continues
    while the arrays are written; call :meth:`wait` or use it as a context manager before exiting).

    Example::

        with TrainCheckpoints(workdir, max_to_keep=3) as ckpts:
            if ckpts.latest_step() is not None:
                r = ckpts.restore(abstract_params=..., abstract_opt_state=...)
            ...
            ckpts.save(step, params, opt_state, {"curriculum": scheduler_state, "data": iterator_state})
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3, keep_every: int | None = None,
                 save_interval_steps: int = 1, async_save: bool = True):
        policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
        if keep_every:
            policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=keep_every))
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_interval_steps,
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
                enable_async_checkpointing=async_save,
                create=True,
            ),
            item_names=(PARAMS, OPT_STATE, STATE),
        )

    def save(self, step: int, params: Any, opt_state: Any = None, state: Mapping[str, Any] | None = None, *,
             force: bool = False) -> bool:
        """Starts saving ``step`` (returns at once when async); False if the interval policy skipped it.

        Args:
          step: the training step the state belongs to.
          params, opt_state: pytrees of (sharded) arrays; ``opt_state`` may be None.
          state: JSON-serializable dict (``bytes`` values are allowed): scheduler, data iterator, ...
          force: save even if the interval policy would skip this step.
        """
        items = {PARAMS: ocp.args.StandardSave(params), STATE: ocp.args.JsonSave(_to_json(dict(state or {})))}
        if opt_state is not None:
            items[OPT_STATE] = ocp.args.StandardSave(opt_state)
        return self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int | None = None, *, abstract_params: Any, abstract_opt_state: Any = None,
                params_shardings: Any = None, opt_state_shardings: Any = None) -> dict[str, Any]:
        """Restores a step (default: the latest) into the given structure and shardings.

        Args:
          step: which step; None for the latest.
          abstract_params, abstract_opt_state: trees of ``jax.ShapeDtypeStruct`` (or arrays), leaves may carry
            shardings (e.g. ``jax.eval_shape`` of the init plus the mesh's shardings). ``abstract_opt_state``
            None skips the optimizer state (e.g. fine-tuning with a fresh optimizer).
          params_shardings, opt_state_shardings: shardings overriding those on the abstract trees.

        Returns:
          ``{'step': int, 'params': ..., 'opt_state': ... or None, 'state': dict}``.
        """
        if step is None:
            step = self._manager.latest_step()
            if step is None:
                raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(f"{self.directory}: no checkpoint for step {step}; "
                                    f"available: {list(self._manager.all_steps())}")
        items = {PARAMS: ocp.args.StandardRestore(_with_shardings(abstract_params, params_shardings)),
                 STATE: ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            items[OPT_STATE] = ocp.args.StandardRestore(_with_shardings(abstract_opt_state, opt_state_shardings))
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        return {"step": int(step), "params": restored[PARAMS],
                "opt_state": restored[OPT_STATE] if abstract_opt_state is not None else None,
                "state": _from_json(restored[STATE] or {})}

    def latest_step(self) -> int | None:
        """The newest saved step, or None for a fresh run."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps currently kept on disk, ascending."""
        return sorted(self._manager.all_steps())

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's threads."""
        self._manager.close()

    def __enter__(self) -> TrainCheckpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
