"""The build config: one schema (settings dataclasses hold the defaults), one parser for arguments and `--set`,
unknown keys named with the nearest valid ones, and configs/ loaded by path rather than installed."""

from __future__ import annotations

import os
import tomllib

import numpy as np
import pytest
import setuptools

from data_gen import config as data_config
from data_gen import link
from data_gen.build import run_build
from data_gen.imaging import ImageOptions
from data_gen.segment import MaskSettings
from data_gen.synth import SynthSettings
from data_gen.types import LoadedImage, OrganMasks
from medclm_jax.config_file import ConfigFileError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PHANTOM = os.path.join(ROOT, "configs", "data", "phantom.py")


def _phantom(sets=()):
    return load_config(f"{PHANTOM}:root=/tmp/p", sets)


def _image(h, w, modality="xray"):
    return LoadedImage(pixels=np.zeros((h, w), np.uint8), modality=modality, spacing_mm=None, col_direction="L")


def _rects(shape, **rects):
    names, planes = [], []
    for name, (r0, r1, c0, c1) in rects.items():
        m = np.zeros(shape, bool)
        m[r0:r1, c0:c1] = True
        names.append(name.replace("_", " "))
        planes.append(m)
    return OrganMasks(names=names, masks=np.stack(planes), source="test")


# ---- unknown keys ----------------------------------------------------------------------------------------------

def test_set_names_an_unknown_key_and_the_nearest():
    with pytest.raises(ConfigFileError, match=r"config has no key 'link.overlay_tolerence'; did you mean "
                                              r"'link.overlay_tolerance'"):
        _phantom(["link.overlay_tolerence=0.1"])
    with pytest.raises(ConfigFileError, match=r"no key 'lnk.min_score'; did you mean 'link.min_score'"):
        _phantom(["lnk.min_score=0.2"])
    with pytest.raises(ConfigFileError, match="no key 'split.salt'"):  # set once, never read: gone
        _phantom(["split.salt=x"])


def test_config_file_argument_names_an_unknown_key():
    with pytest.raises(ConfigFileError, match=r"no key 'typo'"):
        load_config(f"{PHANTOM}:root=/x,typo=1")
    with pytest.raises(ConfigFileError, match=r"no key 'mask'; did you mean 'masks'"):
        load_config(f"{PHANTOM}:root=/x,mask=/m")


@pytest.mark.parametrize("settings, section, key, nearest", [
    (link.LinkSettings, "link", "specific_tolerence", "link.specific_tolerance"),
    (MaskSettings, "masks", "cxas_weight", "masks.cxas_weights"),
    (ImageOptions, "image", "max_sid", "image.max_side"),
    (SynthSettings, "synth", "sede", "synth.seed"),
])
def test_settings_refuse_unknown_keys_in_their_section(settings, section, key, nearest):
    with pytest.raises(ConfigFileError, match=rf"no key '{section}.{key}'; did you mean '{nearest}'"):
        settings.from_config({key: 1})


def test_nested_settings_name_the_full_key():
    with pytest.raises(ConfigFileError, match=r"no key 'synth.llm.max_concurency'; did you mean "
                                              r"'synth.llm.max_concurrency'"):
        SynthSettings.from_config({"backend": "llm", "llm": {"max_concurency": 2}})


def test_settings_convert_and_check_value_types():
    assert link.LinkSettings.from_config({"min_score": "0.3", "prefer_specific": "no"}) == link.LinkSettings(
        min_score=0.3, prefer_specific=False)
    with pytest.raises(ConfigFileError, match=r"config key 'link.min_score': 'high' is not a valid float"):
        link.LinkSettings.from_config({"min_score": "high"})


def test_a_config_file_that_writes_an_unknown_key_stops_the_build_before_any_image(tmp_path):
    cfg = _phantom()
    cfg.link.overlay_tolerence = 0.1  # a typo written by a config file, not through the parser
    with pytest.raises(ConfigFileError, match="did you mean 'link.overlay_tolerance'"):
        run_build(cfg, str(tmp_path / "out"), progress=False)
    assert not os.path.exists(tmp_path / "out")
    cfg = _phantom()
    cfg.curriculum.hard_fractoin = 0.5
    with pytest.raises(ConfigFileError, match="did you mean 'curriculum.hard_fraction'"):
        data_config.validate(cfg)


# ---- one source of defaults --------------------------------------------------------------------------------------

def test_settings_sections_are_written_from_the_dataclass_defaults():
    base = data_config.base_config("x", "coco")
    for section, settings in data_config.SETTINGS.items():
        assert set(base[section].keys()) == {f for f in settings.__dataclass_fields__}, section
        assert settings.from_config(base[section]) == settings(), section
    data_config.validate(base)


def test_every_link_setting_can_be_set():
    cfg = _phantom(["link.specific_tolerance=0.05", "link.overlay_tolerance=0.05", "link.max_distance_px=40"])
    s = link.LinkSettings.from_config(cfg.link)
    assert (s.specific_tolerance, s.overlay_tolerance, s.max_distance_px) == (0.05, 0.05, 40.0)
    assert link.LinkSettings.from_config(_phantom(["link.max_distance_px=none"]).link).max_distance_px is None
    masks = MaskSettings.from_config(_phantom(["masks.device=cpu", "masks.fast=yes"]).masks)
    assert (masks.device, masks.fast) == ("cpu", True)


def test_set_values_take_the_field_type_and_may_hold_commas():
    cfg = _phantom(["adapter.root=/data/a,b=c", "adapter.class_column=none", "adapter.options.type_map.4=liver mass",
                    "write.records_per_shard=64", "curriculum.stratify=off"])
    assert (cfg.adapter.root, cfg.adapter.class_column) == ("/data/a,b=c", None)
    assert cfg.adapter.options.type_map.to_dict() == {"4": "liver mass"}  # a *_map table takes new rows
    assert (cfg.write.records_per_shard, cfg.curriculum.stratify) == (64, False)
    with pytest.raises(ConfigFileError, match="'write.records_per_shard': '6.5' is not a valid int"):
        _phantom(["write.records_per_shard=6.5"])
    with pytest.raises(ConfigFileError, match="must look like key.sub=value"):
        _phantom(["write.records_per_shard"])


def test_set_tolerances_change_the_host():
    shape = (200, 200)
    zones = _rects(shape, right_lung=(20, 180, 10, 90), right_upper_zone_of_lung=(20, 73, 10, 90))
    near_edge = np.array([[30.0, 54.0, 50.0, 74.0]])  # 95% in the upper zone, 100% in the lung
    assert link.link_lesions(near_edge, zones, _image(*shape), _phantom().link)[0].organ == "right upper zone of lung"
    tight = _phantom(["link.specific_tolerance=0.01"]).link
    assert link.link_lesions(near_edge, zones, _image(*shape), tight)[0].organ == "right lung"

    rib = _rects(shape, right_4th_rib=(40, 60, 0, 120), right_upper_zone_of_lung=(20, 73, 10, 90))
    lung_89 = np.array([[40.0, 42.0, 96.0, 52.0]])  # 50/56 in the zone, all on the rib
    assert link.link_lesions(lung_89, rib, _image(*shape), _phantom().link)[0].organ == "right upper zone of lung"
    tight = _phantom(["link.overlay_tolerance=0.05"]).link
    assert link.link_lesions(lung_89, rib, _image(*shape), tight)[0].organ == "right 4th rib"


def test_default_nearest_radius_is_five_percent_of_the_long_side():
    defaults = link.LinkSettings.from_config(_phantom().link)
    assert defaults.max_distance_px is None
    assert defaults.max_distance(100, 200, None) == pytest.approx(10.0)
    assert defaults.max_distance(2000, 1000, None) == pytest.approx(100.0)
    assert defaults.max_distance(2000, 1000, (0.5, 0.5)) == 30.0  # with a spacing: max_distance_mm
    box = np.array([[120.0, 40.0, 130.0, 50.0]])  # 10.5 px right of the liver's last pixel centre (109.5)
    for width, method in ((200, "none"), (220, "nearest")):  # radius 10 px, then 11 px
        masks = _rects((100, width), liver=(20, 80, 0, 110))
        (res,) = link.link_lesions(box, masks, _image(100, width, "ct"), _phantom().link)
        assert res.method == method, width


# ---- configs/ is loaded by path ----------------------------------------------------------------------------------

def test_configs_is_not_an_installed_package():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = setuptools.find_packages(ROOT, include=include)
    assert "data_gen" in packages and "medclm_jax" in packages
    assert not [p for p in packages if p.split(".")[0] in ("configs", "tests", "benchmarks")], packages
    assert not os.path.exists(os.path.join(ROOT, "configs", "__init__.py"))


def test_dataset_configs_load_by_name():
    cfg = data_config.load_dataset_config("phantom", "root=/tmp/p", ["write.records_per_shard=8"])
    assert (cfg.adapter.root, cfg.write.records_per_shard) == ("/tmp/p", 8)
    assert data_config.config_path("phantom") == os.path.join(ROOT, "configs", "data", "phantom.py")
    with pytest.raises(ConfigFileError, match="dataset config 'vindr' not found"):
        data_config.config_path("vindr")
