"""Rolling Orbax checkpoints of a training run: step, params, optimizer state and JSON state.

On disk::

    WORKDIR/<step>/params, opt_state   StandardSave (sharded arrays written by every host in parallel)
    WORKDIR/<step>/state               JsonSave: curriculum scheduler, data-iterator position, RNG seeds, ...

Restores go straight into the requested shardings by the rule of ``medclm_jax.model.checkpoint.with_shardings``
(that module owns the model checkpoint: the weights a run starts from or exports).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp

from medclm_jax.model.checkpoint import PARAMS, with_shardings

OPT_STATE, STATE = "opt_state", "state"
_BYTES_TAG = "__bytes_b64__"


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
        items = {PARAMS: ocp.args.StandardRestore(with_shardings(abstract_params, params_shardings)),
                 STATE: ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            items[OPT_STATE] = ocp.args.StandardRestore(with_shardings(abstract_opt_state, opt_state_shardings))
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
