"""A small built dataset for the tests of the training half: phantom data in real formats, converted by data_gen.

tests/conftest.py's folder is on sys.path, so tests import it as `from phantom_dataset import build_dataset`.
"""

from __future__ import annotations

import os

from data_gen import phantom
from data_gen.build import run_build
from medclm_jax.config_file import load_config

PHANTOM_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "data", "phantom.py")


def build_dataset(tmp_path_factory, name: str, images: int, *, seed: int = 3, records_per_shard: int = 6) -> str:
    """Writes `images` phantom images and builds them; returns the dataset folder."""
    raw = str(tmp_path_factory.mktemp(f"{name}_raw"))
    phantom.write_phantom(raw, images, seed=seed)
    out = str(tmp_path_factory.mktemp(f"{name}_built"))
    run_build(load_config(f"{PHANTOM_CONFIG}:root={raw}", [f"write.records_per_shard={records_per_shard}"]), out,
              workers=1, progress=False)
    return out


def record_texts(records) -> list[str]:
    """Every question, reasoning and answer of decoded records: what a tokenizer for them is trained on."""
    return [r[k][0].decode() for r in records for k in r if k.endswith(("question", "cot", "answer"))]
