"""Rolling Orbax checkpoints of a training run: step, params, optimizer state and JSON state.

On disk::

    WORKDIR/<step>/params, opt_state   StandardSave (sharded arrays written by every host in parallel)
    WORKDIR/<step>/state               JsonSave: curriculum scheduler, data-iterator position, RNG seeds, ...

`save_train_state` / `restore_train_state` put a whole `train.state.TrainState` there: params and opt_state as
items, its `step` as the checkpoint's step and its `rng` in the JSON state (`TRAIN_RNG`). `restore_newest` tries
the kept steps newest first and reports (and skips, then moves aside) one that fails to restore.

Async saves copy the arrays to host memory before `save` returns (Orbax's default synchronous device-to-host
transfer), so the trainer may donate the saved state's buffers to the next step at once.

Restores go straight into the requested shardings by the rule of ``medclm_jax.model.checkpoint.with_shardings``
(that module owns the model checkpoint: the weights a run starts from or exports).
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from medclm_jax.model.checkpoint import PARAMS, with_shardings
from medclm_jax.train.state import TrainState

log = logging.getLogger(__name__)

OPT_STATE, STATE = "opt_state", "state"
TRAIN_RNG = "train_rng"  # the JSON state's key for TrainState.rng (uint32 key data)
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
            # Handlers named up front (not inferred from the first save/restore's args) so that a new manager
            # reads a step's metadata (`_check_structure`) before restoring it.
            item_handlers={PARAMS: ocp.StandardCheckpointHandler(), OPT_STATE: ocp.StandardCheckpointHandler(),
                           STATE: ocp.JsonCheckpointHandler()},
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
        self._check_structure(int(step), {PARAMS: abstract_params, OPT_STATE: abstract_opt_state})
        items = {PARAMS: ocp.args.StandardRestore(with_shardings(abstract_params, params_shardings)),
                 STATE: ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            items[OPT_STATE] = ocp.args.StandardRestore(with_shardings(abstract_opt_state, opt_state_shardings))
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        return {"step": int(step), "params": restored[PARAMS],
                "opt_state": restored[OPT_STATE] if abstract_opt_state is not None else None,
                "state": _from_json(restored[STATE] or {})}

    def _check_structure(self, step: int, abstract: Mapping[str, Any]) -> None:
        """Refuses a restore whose target holds other arrays than the checkpoint: Orbax restores a *subset* of a
        saved tree without a word (an optimizer state saved with no frozen group restores into a config that freezes
        `vision/.*`, whose state has 46 of the 120 arrays), which would resume a run with another optimizer than the
        one it was trained with."""
        try:
            saved = self._manager.item_metadata(step)
        except Exception:  # pylint: disable=broad-except
            return  # no readable metadata: the restore itself reports what is wrong
        for name, target in abstract.items():
            if target is None or saved is None or saved.get(name) is None:
                continue
            tree = getattr(saved[name], "tree", saved[name])
            on_disk = sorted(tuple(getattr(x, "shape", ())) for x in jax.tree.leaves(tree))
            wanted = sorted(tuple(x.shape) for x in jax.tree.leaves(target))
            if on_disk != wanted:
                raise ValueError(
                    f"{self.directory}/{step}: the checkpoint's {name} holds {len(on_disk)} arrays, this config's "
                    f"{len(wanted)}{_shape_diff(on_disk, wanted)}; the config builds another train state (frozen "
                    "groups, gradient accumulation or the model differ from the run that saved it). Resume with the "
                    "run's own config, or start from its weights with model.init (a `medclm convert` export or "
                    "WORKDIR/final)")

    def save_train_state(self, state: TrainState, json_state: Mapping[str, Any] | None = None, *,
                         force: bool = False) -> bool:
        """Starts saving a whole `TrainState` (at its own `step`) with `json_state`; see :meth:`save`."""
        rng = np.asarray(jax.device_get(state.rng)).astype(np.uint32).tolist()
        return self.save(int(jax.device_get(state.step)), state.params, state.opt_state,
                         {**dict(json_state or {}), TRAIN_RNG: rng}, force=force)

    def restore_train_state(self, abstract: TrainState, shardings: TrainState, step: int | None = None
                            ) -> tuple[TrainState, dict[str, Any]]:
        """(the `TrainState` of `step` (default: the latest) in `shardings`, the rest of its JSON state).

        Args:
          abstract, shardings: the state's shapes and shardings (`train.step.state_layout`).
        """
        r = self.restore(step, abstract_params=abstract.params, abstract_opt_state=abstract.opt_state,
                         params_shardings=shardings.params, opt_state_shardings=shardings.opt_state)
        extra = dict(r["state"])
        if TRAIN_RNG not in extra:
            raise ValueError(f"{self.directory}/{r['step']}: no {TRAIN_RNG!r} in the JSON state; not written by "
                             "save_train_state")
        rng = np.asarray(extra.pop(TRAIN_RNG), np.uint32)
        state = TrainState(step=jax.device_put(np.int32(r["step"]), shardings.step), params=r["params"],
                           opt_state=r["opt_state"], rng=jax.device_put(rng, shardings.rng))
        return state, extra

    def restore_newest(self, abstract: TrainState, shardings: TrainState, *, move_aside: bool = True
                       ) -> tuple[TrainState, dict[str, Any]] | None:
        """The newest kept step that restores (`restore_train_state`); None when no step is kept.

        A step that fails (a truncated or corrupt write) is logged with its error and the one before it is tried.
        Once an older step restores, which shows that the state's structure fits, the newer ones that failed are
        broken: with `move_aside` they are moved to `<step>.unrestorable-<unix time>` (kept for inspection; the
        run writes those steps again).

        Raises:
          ValueError: steps are kept but none restores (typically a config that builds another state: a different
            model, optimizer or frozen groups); nothing is moved.
        """
        failed: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                restored = self.restore_train_state(abstract, shardings, step)
            except Exception as e:  # pylint: disable=broad-except  # Orbax/tensorstore raise many kinds
                why = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                log.warning("%s: checkpoint of step %d does not restore (%s); trying the one before it",
                            self.directory, step, why)
                failed.append((step, why))
                continue
            for bad, _ in failed if move_aside else ():
                self._move_aside(bad, os.path.join(self.directory, f"{bad}.unrestorable-{int(time.time())}"))
            return restored
        if failed:
            raise ValueError(f"{self.directory}: no kept checkpoint restores into this config's train state "
                             f"(newest, step {failed[0][0]}: {failed[0][1]}); was the model, optimizer or a frozen "
                             "group changed? Use another workdir for another config")
        return None

    def _move_aside(self, step: int, target: str) -> None:
        log.warning("%s: moved the checkpoint of step %d, which does not restore, to %s", self.directory, step,
                    target)
        if jax.process_index() == 0:
            os.replace(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

            multihost_utils.sync_global_devices(f"unrestorable {step}")
        self._manager.reload()

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


def _shape_diff(on_disk: list, wanted: list) -> str:
    """' (e.g. shape (64,) only in the checkpoint)': the first shape whose count differs, for the error."""
    counts = collections.Counter(on_disk)
    counts.subtract(collections.Counter(wanted))
    for shape, n in counts.items():
        if n:
            return f" (e.g. shape {shape} {'only in the checkpoint' if n > 0 else 'missing from the checkpoint'})"
    return ""
