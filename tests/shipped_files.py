"""Files that installed packages ship (pydicom's test files, pydicom-data's real radiographs): never downloaded.

tests/conftest.py's folder is on sys.path, so tests import it as `from shipped_files import pydicom_file`.
"""

from __future__ import annotations

import os
import warnings

import pytest
from pydicom.data import get_testdata_file


def pydicom_file(name: str) -> str:
    """A file shipped with pydicom or pydicom-data; skip when this install lacks it (never download)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            path = get_testdata_file(name, download=False)
        except TypeError:  # older pydicom without `download`
            path = get_testdata_file(name)
    if not path or not os.path.exists(path):
        pytest.skip(f"{name} is not installed (pydicom-data)")
    return path
