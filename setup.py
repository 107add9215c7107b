"""Build script: package metadata lives in pyproject.toml; this file adds the CPU rasterizer."""

from setuptools import setup

setup()
