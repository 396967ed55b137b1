"""Setuptools shim so Dataflow workers can install the package.

Beam's stager runs `python setup.py sdist` for `--setup_file ./setup.py`; all
metadata lives in pyproject.toml.
"""

import setuptools

setuptools.setup()
