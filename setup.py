"""Shim so that `pip install -e .` works with older pips; metadata lives in setup.cfg."""
from setuptools import setup

setup()
