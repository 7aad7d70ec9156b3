"""Packaging that pyproject.toml cannot declare: the top-level `weights/` folder (tokenizer vocabulary and
the default model) is installed as the package data folder `tinysd/weights/`, so that a plain
(non-editable) install, the wheel and the sdist all carry it (tinysd.paths finds either location).
Everything else is in pyproject.toml.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["tinysd", "tinysd.*"]) + ["tinysd.weights"],
    package_dir={"tinysd.weights": "weights"},
    package_data={"tinysd": ["data/*.txt", "hvx/*.c", "hvx/*.h", "kernels/signatures.json"], "tinysd.weights": ["**/*"]},
)
