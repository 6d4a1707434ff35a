"""Hugging Face VLM checkpoints (safetensors + config.json) <-> our params, and the layer layout of our params.

- Import (``load_hf``): PaliGemma 1/2 or Gemma 3 / MedGemma -> (VLMConfig, param tree), which
  ``medclm_jax.model.checkpoint.save_checkpoint`` writes as our model checkpoint.
- Export (``export_hf``): back to (sharded) safetensors + config.json that transformers (and vLLM) load.
- Relayout (``relayout``): layers unrolled (serving: ring-buffer KV caches) or stacked for nn.scan (training).

Import reads one tensor at a time from the safetensors files and builds one param tree, so a 4B model is
never held twice while reading (Orbax's write then stages a copy; ``benchmarks/convert_memory.py``). Export
streams tensors into shards of at most ``max_shard_bytes``. Tensor names are read in any of the three layouts in
use (the Hub's `vision_tower.vision_model.` / `language_model.model.`, transformers 5.x's saved `vision_tower.`,
and its in-memory `model.vision_tower.` / `model.language_model.`) and written in the Hub layout, which
transformers 4.x/5.x and vLLM all load. The command line is ``medclm_jax/commands/convert.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medclm_jax.model import checkpoint, convert_gemma, convert_siglip, safetensors_io
from medclm_jax.model.vlm import VLMConfig

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = {
    "PaliGemmaForConditionalGeneration": "paligemma",
    "Gemma3ForConditionalGeneration": "gemma3",
}
# Each component's prefix in the three layouts in use; a name takes the first prefix it starts with.
PREFIXES = {
    "vision": ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.",
               "vision_tower."),
    "projector": ("model.multi_modal_projector.", "multi_modal_projector."),
    "text": ("model.language_model.model.", "language_model.model.", "model.language_model.", "language_model."),
}
EXPORT_PREFIXES = {"vision": "vision_tower.vision_model.", "projector": "multi_modal_projector.",
                   "text": "language_model.model."}


# ---------------------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------------------


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; --from-hf needs a Hugging Face model folder (config.json + "
                                "*.safetensors)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def hf_family(hf: Mapping[str, Any]) -> str:
    """'paligemma' or 'gemma3' from config.json's `architectures`; anything else raises, listing what works."""
    archs = list(hf.get("architectures") or [])
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[arch]
    raise ValueError(f"config.json architectures {archs} are not supported; supported: "
                     f"{sorted(SUPPORTED_ARCHITECTURES)}")


def vlm_config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> VLMConfig:
    """VLMConfig from a config.json dict; transformers' own config classes fill the defaults.

    Args:
      hf: the parsed config.json.
      **overrides: our fields applied to both towers: dtype, param_dtype, scan_layers, remat_policy.
    """
    import transformers  # configs only; no torch

    family = hf_family(hf)
    cls = transformers.PaliGemmaConfig if family == "paligemma" else transformers.Gemma3Config
    full = cls.from_dict(dict(hf))
    vision = convert_siglip.siglip_config_from_hf(full.vision_config.to_dict(), **overrides)
    text_hf = full.text_config.to_dict()
    if family == "paligemma":
        # PaliGemmaConfig switches this on for its own mask handling; the prefix mask comes from us.
        text_hf.pop("use_bidirectional_attention", None)
    text = convert_gemma.gemma_config_from_hf(text_hf, **overrides)
    if not getattr(full, "tie_word_embeddings", True) or not text_hf.get("tie_word_embeddings", True):
        raise ValueError("config.json: tie_word_embeddings=false is not supported (PaliGemma/Gemma 3 tie them)")

    def special(key: str, default: int, many: bool = False):
        value = hf.get(key, text_hf.get(key))
        if isinstance(value, (list, tuple)):
            if many and len(value) > 1:
                return tuple(int(v) for v in value)
            value = value[0] if value else None
        return default if value is None else int(value)

    kw: dict[str, Any] = dict(family=family, vision=vision, text=text, image_token_id=int(full.image_token_id),
                              bos_token_id=special("bos_token_id", 2), pad_token_id=special("pad_token_id", 0),
                              eos_token_id=special("eos_token_id", 1, many=True))
    if family == "gemma3":
        kw.update(mm_tokens_per_image=int(full.mm_tokens_per_image), boi_token_id=int(full.boi_token_id),
                  eoi_token_id=int(full.eoi_token_id))
    return VLMConfig(**kw)


def vlm_config_to_hf(cfg: VLMConfig) -> dict[str, Any]:
    """The config.json dict transformers needs to rebuild `cfg` (inverse of `vlm_config_from_hf`)."""
    text = convert_gemma.gemma_config_to_hf(cfg.text)
    vision = convert_siglip.siglip_config_to_hf(cfg.vision)
    dtype = cfg.text.param_dtype
    eos = list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
    common = dict(bos_token_id=cfg.bos_token_id, eos_token_id=eos, pad_token_id=cfg.pad_token_id,
                  image_token_index=cfg.image_token_id, tie_word_embeddings=True, dtype=dtype, torch_dtype=dtype)
    text.update(bos_token_id=cfg.bos_token_id, eos_token_id=eos, pad_token_id=cfg.pad_token_id)
    if cfg.family == "paligemma":
        vision["projection_dim"] = cfg.text.width
        text["num_image_tokens"] = cfg.num_image_tokens
        return dict(architectures=["PaliGemmaForConditionalGeneration"], model_type="paligemma",
                    vocab_size=cfg.text.vocab_size, projection_dim=cfg.text.width, hidden_size=cfg.text.width,
                    text_config=text, vision_config=vision, **common)
    return dict(architectures=["Gemma3ForConditionalGeneration"], model_type="gemma3",
                mm_tokens_per_image=cfg.mm_tokens_per_image, boi_token_index=cfg.boi_token_id,
                eoi_token_index=cfg.eoi_token_id, text_config=text, vision_config=vision, **common)


# ---------------------------------------------------------------------------------------------------------
# Params.
# ---------------------------------------------------------------------------------------------------------


def detect_prefixes(names: list[str]) -> dict[str, str]:
    """For each component, the single prefix this checkpoint uses (raises when one is absent or mixed)."""
    found: dict[str, set[str]] = {c: set() for c in PREFIXES}
    for name in names:
        if name.endswith("lm_head.weight"):
            continue
        for comp, options in PREFIXES.items():
            match = next((p for p in options if name.startswith(p)), None)
            if match:
                found[comp].add(match)
                break
    out = {}
    for comp, prefixes in found.items():
        if len(prefixes) != 1:
            what = "no" if not prefixes else f"mixed {sorted(prefixes)}"
            raise ValueError(f"checkpoint has {what} {comp} tensors (expected names starting with one of "
                             f"{list(PREFIXES[comp])})")
        out[comp] = prefixes.pop()
    return out


def hf_to_vlm_params(get_tensor, names: list[str], cfg: VLMConfig) -> dict[str, Any]:
    """Our param tree {'vision', 'projector', 'decoder'} from HF tensors (read one at a time).

    Raises:
      ValueError: a tensor is missing or has the wrong shape (the message names it and the expected shape).
    """
    prefix = detect_prefixes(names)
    dtype = safetensors_io.numpy_dtype(cfg.text.param_dtype)

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        try:
            arr = get_tensor(name)
        except KeyError:
            raise ValueError(f"tensor {name!r} is missing from the checkpoint (expected shape {shape})") from None
        return convert_siglip.expect_shape(name, np.asarray(arr), shape).astype(dtype, copy=False)

    vision = convert_siglip.hf_to_siglip_params(get_tensor, cfg.vision, prefix["vision"])
    dv, dt, p = cfg.vision.width, cfg.text.width, prefix["projector"]
    if cfg.family == "paligemma":
        projector = {"kernel": get(p + "linear.weight", (dt, dv)).T, "bias": get(p + "linear.bias", (dt,))}
    else:
        projector = {"kernel": get(p + "mm_input_projection_weight", (dv, dt)),
                     "mm_soft_emb_norm": {"scale": get(p + "mm_soft_emb_norm.weight", (dv,))}}
    decoder = convert_gemma.hf_to_gemma_params(get_tensor, cfg.text, prefix["text"])
    return {"vision": vision, "projector": projector, "decoder": decoder}


def vlm_params_to_hf(params: Mapping[str, Any], cfg: VLMConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yields `(hf_name, array)` in the Hub layout, one tensor at a time (inverse of `hf_to_vlm_params`)."""
    yield from convert_siglip.siglip_params_to_hf(params["vision"], cfg.vision, EXPORT_PREFIXES["vision"])
    p, proj = EXPORT_PREFIXES["projector"], params["projector"]
    if cfg.family == "paligemma":
        yield p + "linear.weight", np.ascontiguousarray(np.asarray(proj["kernel"]).T)
        yield p + "linear.bias", np.asarray(proj["bias"])
    else:
        yield p + "mm_input_projection_weight", np.asarray(proj["kernel"])
        yield p + "mm_soft_emb_norm.weight", np.asarray(proj["mm_soft_emb_norm"]["scale"])
    yield from convert_gemma.gemma_params_to_hf(params["decoder"], cfg.text, EXPORT_PREFIXES["text"])


def load_hf(hf_dir: str | Path, **overrides: Any) -> tuple[VLMConfig, dict[str, Any]]:
    """Reads an HF checkpoint folder: (config, params as numpy). `param_dtype='auto'` keeps the stored dtype."""
    hf = read_hf_config(hf_dir)
    if overrides.get("param_dtype", "auto") == "auto":
        stored = str(hf.get("dtype") or hf.get("torch_dtype") or "float32")
        overrides["param_dtype"] = stored if stored in ("float32", "bfloat16") else "float32"
    cfg = vlm_config_from_hf(hf, **overrides)
    reader = safetensors_io.SafetensorsReader(hf_dir)
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        used.add(name)
        return reader.get(name)

    try:
        params = hf_to_vlm_params(get, reader.keys(), cfg)
    finally:
        reader.close()
    # Tied lm_head copies and SigLIP's pooling head are expected leftovers; anything else hints at a mismatch.
    unused = sorted(n for n in set(reader.keys()) - used if not n.endswith("lm_head.weight") and ".head." not in n)
    if unused:
        log.warning("%s: %d tensors were not used, e.g. %s", hf_dir, len(unused), unused[:5])
    return cfg, params


# An export folder's record of the files it holds: `--to-hf` writes only into an empty folder or over an export
# of ours, and `overwrite` removes only what such an export wrote.
EXPORT_MANIFEST = "medclm_export.json"
_EXPORT_NAME = re.compile(r"^(config\.json|model\.safetensors(\.index\.json)?|model-\d{5}-of-\d{5}\.safetensors"
                          r"|\.shard-\d{5}\.tmp)$")  # what export_hf (via safetensors_io.write_sharded) writes


def _export_manifest(out: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out / EXPORT_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) and f and "/" not in f and "\\" not in f
                                              and f not in (".", "..") for f in files):
        return None
    return manifest


def check_export_dir(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuses an export folder that is not new, empty, or (with `overwrite`) an earlier export of ours.
    Touches nothing.

    Raises:
      FileExistsError: naming the folder and what to do.
    """
    out = Path(out_dir)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out}: is a file, not a folder; choose a new or empty folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if _export_manifest(out) is None:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise FileExistsError(f"{out}: the folder is not empty and holds no export of medclm convert ({shown}); "
                              "choose a new or empty folder (nothing was written or removed)")
    if not overwrite:
        raise FileExistsError(f"{out}: holds an earlier export; pass --overwrite to replace it (only the files it "
                              "wrote are removed), or choose another folder")


def _clear_export_dir(out: Path) -> None:
    """Removes the files of the earlier export in `out` (checked by `check_export_dir`), and nothing else."""
    manifest = _export_manifest(out)
    if manifest is None:
        return
    ours = set(manifest["files"])
    for p in out.iterdir():
        # An interrupted export never listed its files: what matches the names export_hf writes is its.
        if (p.name in ours or (not manifest.get("complete") and (_EXPORT_NAME.match(p.name)
                                                                  or p.name in checkpoint.TOKENIZER_FILES))):
            if p.is_file() or p.is_symlink():
                p.unlink()
    (out / EXPORT_MANIFEST).unlink()


def export_hf(params: Mapping[str, Any], cfg: VLMConfig, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
              max_shard_bytes: int = 2 << 30, overwrite: bool = False) -> list[str]:
    """Writes config.json + (sharded) safetensors (+ tokenizer files from `tokenizer_dir`) to `out_dir`.

    `out_dir` must be new, empty, or an earlier export (replaced with `overwrite`), and apart from `tokenizer_dir`.
    It also gets `medclm_export.json`, the list of the files written, which is how a later export knows what it
    may replace.
    """
    out = Path(out_dir)
    if tokenizer_dir is not None:
        checkpoint.check_apart(tokenizer_dir, out)
    check_export_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _clear_export_dir(out)
    record = {"format": "medclm-hf-export", "version": 1, "complete": False, "files": []}
    (out / EXPORT_MANIFEST).write_text(json.dumps(record) + "\n")  # first: an interrupted export is still ours
    files = safetensors_io.write_sharded(out, vlm_params_to_hf(params, cfg), max_shard_bytes)
    (out / "config.json").write_text(json.dumps(vlm_config_to_hf(cfg), indent=2) + "\n")
    if tokenizer_dir is not None:
        files += checkpoint.copy_tokenizer_files(tokenizer_dir, out)
    files = [*files, "config.json"]
    (out / EXPORT_MANIFEST).write_text(json.dumps({**record, "complete": True, "files": files}, indent=1) + "\n")
    return files


def relayout(cfg: VLMConfig, params: Mapping[str, Any], scan_layers: bool) -> tuple[VLMConfig, dict[str, Any]]:
    """The same model with both towers' layers stacked for ``nn.scan`` (training: fast compiles) or unrolled
    (serving: decoding then keeps ring-buffer caches on sliding-window layers, see ``gemma.init_cache``).

    Returns host (numpy) params; the config's ``scan_layers`` is set on both towers.
    """
    vision_prefix, text_prefix = "layer_", "layers_"  # siglip.SiglipEncoder / gemma.GemmaDecoder names

    def convert_tower(tree: Mapping[str, Any], prefix: str, depth: int, stacked: bool) -> dict[str, Any]:
        if stacked == scan_layers:
            return _host(dict(tree))
        out = {k: _host(v) for k, v in tree.items() if k != "layers" and not k.startswith(prefix)}
        if stacked:
            out.update({f"{prefix}{i}": _tree_map(lambda x: np.asarray(x[i]), tree["layers"]) for i in range(depth)})
        else:
            out["layers"] = _tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                                      *[tree[f"{prefix}{i}"] for i in range(depth)])
        return out

    new_cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, scan_layers=scan_layers),
                                  text=dataclasses.replace(cfg.text, scan_layers=scan_layers))
    new = {k: _host(v) for k, v in params.items() if k not in ("vision", "decoder")}
    new["vision"] = convert_tower(params["vision"], vision_prefix, cfg.vision.depth, cfg.vision.scan_layers)
    new["decoder"] = convert_tower(params["decoder"], text_prefix, cfg.text.depth, cfg.text.scan_layers)
    return new_cfg, new


def _tree_map(fn, *trees):
    import jax

    return jax.tree.map(fn, *trees)


def _host(tree: Any) -> Any:
    return _tree_map(np.asarray, tree)


def to_jax_leafwise(params: dict[str, Any]) -> Any:
    """The numpy tree as jax arrays, one leaf at a time, each numpy leaf released once moved: Orbax writes
    jax arrays with one staging copy, but numpy trees with about two (``benchmarks/convert_memory.py``).
    Consumes ``params``: the caller must not keep another reference to it."""
    import jax

    leaves, treedef = jax.tree.flatten(params)
    params.clear()
    for i in range(len(leaves)):
        leaves[i] = jax.device_put(leaves[i])  # drops the list's reference, the numpy leaf's last one
    return jax.tree.unflatten(treedef, leaves)
