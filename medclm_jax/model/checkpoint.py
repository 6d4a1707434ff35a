"""A model checkpoint: the weights a run starts from or exports, with the config that builds the model.

On disk (plain Orbax, so other Orbax users can read it)::

    DIR/_CHECKPOINT_METADATA   Orbax's own record of the composite checkpoint
    DIR/params/                StandardSave of the parameter tree {'vision', 'projector', 'decoder'}
    DIR/metadata/              JsonSave: {'format': 'medclm-vlm', 'version': 1, 'config': VLMConfig as JSON}
    DIR/tokenizer.json, tokenizer_config.json, ...   tokenizer and processor files (TOKENIZER_FILES), copied
                                                     from the Hugging Face folder the weights came from

``medclm convert --from-hf`` writes it, ``--to-hf`` reads it, and training starts from it. :func:`save_params`
and :func:`load_params` are the layout alone (any parameter tree, any JSON metadata);
:func:`save_checkpoint` / :func:`load_checkpoint` add the format tag and the model config.

Restores go straight into the requested shardings (each host reads only its shards), so a model too big for
one host's memory loads onto a device mesh, and dtypes can change on the way (fp32 file -> bf16 params).
The rolling checkpoints of a training run (``TrainCheckpoints``) live in the train package, which imports this.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from medclm_jax.model import vlm
from medclm_jax.model.gemma import GemmaConfig
from medclm_jax.model.siglip import SiglipConfig
from medclm_jax.model.vlm import VLMConfig

FORMAT, VERSION = "medclm-vlm", 1
PARAMS, METADATA = "params", "metadata"
# Travel with the weights both ways (HF folder -> our checkpoint -> HF folder); absent ones are skipped.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
                   "processor_config.json", "generation_config.json")


# ---------------------------------------------------------------------------------------------------------
# The layout: a parameter tree and a JSON record.
# ---------------------------------------------------------------------------------------------------------


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


# What a checkpoint folder holds; `--overwrite` replaces a folder only when it holds nothing else.
CHECKPOINT_ENTRIES = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt", PARAMS, METADATA, *TOKENIZER_FILES})


def is_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds the layout :func:`save_params` writes."""
    d = os.fspath(directory)
    return (os.path.isfile(os.path.join(d, "_CHECKPOINT_METADATA")) and os.path.isdir(os.path.join(d, PARAMS))
            and os.path.isdir(os.path.join(d, METADATA)))


def check_apart(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Refuses a `target` folder that is `source`, holds it or lies inside it: writing (or, with overwrite,
    replacing) it would destroy the source being read.

    Raises:
      ValueError: naming both.
    """
    s, t = (os.path.realpath(os.path.abspath(os.fspath(p))) for p in (source, target))
    if t == s or s.startswith(t.rstrip(os.sep) + os.sep) or t.startswith(s.rstrip(os.sep) + os.sep):
        what = "is" if t == s else "contains" if s.startswith(t.rstrip(os.sep) + os.sep) else "lies inside"
        raise ValueError(f"{target}: the output {what} the input {source}; writing there could destroy it: choose "
                         "a folder apart from the input")


def check_output_dir(directory: str | os.PathLike, overwrite: bool = False) -> bool:
    """Whether a checkpoint may be written at `directory`; returns True when the folder exists (empty, or an
    earlier checkpoint that ``overwrite`` replaces). Touches nothing.

    Raises:
      FileExistsError: `directory` is a file, a folder that is not a checkpoint, a checkpoint without
        ``overwrite``, or a checkpoint together with other files (which replacing it would delete).
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.lexists(directory):
        return False
    if not os.path.isdir(directory):
        raise FileExistsError(f"{directory}: is a file, not a folder; choose a new or empty folder")
    entries = sorted(os.listdir(directory))
    if not entries:
        return True
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    if not is_checkpoint(directory):
        raise FileExistsError(f"{directory}: the folder is not empty and is not a model checkpoint ({shown}); "
                              "choose a new or empty folder (nothing was written or removed)")
    if not overwrite:
        raise FileExistsError(f"{directory}: a checkpoint already exists here; pass overwrite=True (--overwrite) "
                              "to replace it, or choose another folder")
    foreign = [e for e in entries if e not in CHECKPOINT_ENTRIES and not e.startswith("_")]  # `_*`: Orbax's own
    if foreign:
        raise FileExistsError(f"{directory}: holds a checkpoint and also files that are not part of one "
                              f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); replacing the "
                              "checkpoint would delete them: move them away or choose another folder")
    return True


def save_params(directory: str | os.PathLike, params: Any, metadata: Mapping[str, Any] | None = None, *,
                overwrite: bool = False) -> None:
    """Writes the layout: the parameter tree and a JSON metadata record.

    Args:
      directory: target folder: new, empty, or (with ``overwrite``) an earlier checkpoint and nothing else
        (:func:`check_output_dir`).
      params: pytree of ``jax.Array`` (possibly sharded over many hosts) or numpy arrays.
      metadata: JSON-serializable dict (model config, source checkpoint, ...).
      overwrite: replace an existing checkpoint at ``directory``.
    """
    directory = os.path.abspath(os.fspath(directory))
    exists = check_output_dir(directory, overwrite)
    # Orbax writes into an existing folder only when told to replace it (an empty one, or a checked checkpoint).
    _checkpointer().save(directory, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        METADATA: ocp.args.JsonSave(dict(metadata or {})),
    }), force=exists)


def _require_checkpoint(directory: str, item: str) -> str:
    path = os.path.join(directory, item)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{directory}: not a model checkpoint (no '{item}' folder); expected the output "
                                f"of save_params or `medclm convert --from-hf`")
    return path


def load_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata written by :func:`save_params`."""
    directory = os.path.abspath(os.fspath(directory))
    _require_checkpoint(directory, METADATA)
    restored = _checkpointer().restore(directory, args=ocp.args.Composite(**{METADATA: ocp.args.JsonRestore()}))
    return dict(restored[METADATA])


def params_shapes(directory: str | os.PathLike) -> Any:
    """Tree of ``jax.ShapeDtypeStruct`` (no sharding) describing the saved parameters, read without loading."""
    directory = os.path.abspath(os.fspath(directory))
    _require_checkpoint(directory, PARAMS)
    tree = _checkpointer().metadata(directory).item_metadata[PARAMS].tree
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree,
                        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Restore targets: ``abstract``'s shapes and dtypes as ``ShapeDtypeStruct`` leaves whose sharding comes from
    ``shardings`` (a tree like ``abstract``, or one sharding for every leaf), else the leaf's own, else the first
    local device. Orbax restores each array straight into its target's sharding."""
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
    target = with_shardings(abstract_params, shardings)
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


# ---------------------------------------------------------------------------------------------------------
# A VLM checkpoint: the layout with the format tag, the model config and the tokenizer files.
# ---------------------------------------------------------------------------------------------------------


def config_to_json(cfg: VLMConfig) -> dict[str, Any]:
    """The config as plain JSON (tuples become lists; :func:`config_from_json` turns them back)."""
    return dataclasses.asdict(cfg)


def config_from_json(d: Mapping[str, Any]) -> VLMConfig:
    lists_to_tuples = lambda x: {k: tuple(v) if isinstance(v, list) else v for k, v in x.items()}  # noqa: E731
    d = lists_to_tuples(d)
    return VLMConfig(**{**d, "vision": SiglipConfig(**lists_to_tuples(d["vision"])),
                        "text": GemmaConfig(**lists_to_tuples(d["text"]))})


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copies the TOKENIZER_FILES present in ``src`` to ``dst``; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file() and Path(src).resolve() != Path(dst).resolve():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def save_checkpoint(out_dir: str | Path, cfg: VLMConfig, params: Mapping[str, Any],
                    tokenizer_dir: str | Path | None = None, overwrite: bool = False) -> None:
    """Writes params + {'format', 'version', 'config'} metadata and copies the tokenizer files.

    `out_dir` as for :func:`save_params`, and apart from `tokenizer_dir` (the folder the weights came from).
    """
    if tokenizer_dir is not None:
        check_apart(tokenizer_dir, out_dir)
    save_params(out_dir, dict(params), {"format": FORMAT, "version": VERSION, "config": config_to_json(cfg)},
                overwrite=overwrite)
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out_dir)


def load_config(ckpt_dir: str | Path) -> VLMConfig:
    """The VLMConfig stored with a model checkpoint."""
    meta = load_metadata(ckpt_dir)
    if "config" not in meta:
        raise ValueError(f"{ckpt_dir}: checkpoint metadata has no model 'config' (keys: {sorted(meta)}); expected "
                         "a folder written by `medclm convert --from-hf`")
    return config_from_json(meta["config"])


def load_checkpoint(ckpt_dir: str | Path, shardings: Any = None) -> tuple[VLMConfig, Any]:
    """(config, params) from a model checkpoint; params go to `shardings` (default: the first local device).

    The stored tree is checked against the model the config builds (a missing or mis-shaped param is named).
    """
    cfg = load_config(ckpt_dir)
    abstract = nn.meta.unbox(jax.eval_shape(lambda: vlm.init_params(cfg, jax.random.key(0))))["params"]
    return cfg, load_params(ckpt_dir, abstract, shardings)
