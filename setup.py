"""Package discovery: every `mlx_whisper_lora` subpackage is found (a new one cannot be left out of
the wheel), and the checkout's top-level `assets/` folder is installed as `mlx_whisper_lora/assets`
(its folders listed as packages, so setuptools installs their files without warnings).
Everything else about the project is in pyproject.toml."""

import os

from setuptools import find_packages, setup

ASSET_DIRS = sorted(root for root, _, _ in os.walk("assets") if "__pycache__" not in root)
ASSET_PACKAGES = {"mlx_whisper_lora." + d.replace(os.sep, "."): d for d in ASSET_DIRS}

setup(
    packages=find_packages(include=["mlx_whisper_lora", "mlx_whisper_lora.*"]) + list(ASSET_PACKAGES),
    package_dir=ASSET_PACKAGES,
    package_data={name: ["*"] for name in ASSET_PACKAGES},
)
