"""Fixtures the CLI tests share; the plain helpers they use are in cli_helpers.py."""

from __future__ import annotations

import pytest
from cli_helpers import write_tiny_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder of the module's own holding the tiny model and its train/eval CSVs: a module
    may add files or write runs into it; override it in the module to add more."""
    return write_tiny_files(tmp_path_factory.mktemp("files"))
