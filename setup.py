"""Package list for setuptools (everything else is in pyproject.toml).

The ``training/`` folder is installed as the importable package ``pano360_training`` (so it cannot
collide with another project's ``training`` module); pyproject.toml alone cannot map a renamed
folder together with ``packages.find``.
"""

from setuptools import find_packages, setup

_training = ["pano360_training" + p[len("training"):] for p in find_packages(include=["training", "training.*"])]

setup(
    packages=find_packages(include=["pano_core", "pano_core.*"]) + _training,
    package_dir={"pano360_training": "training"},
)
