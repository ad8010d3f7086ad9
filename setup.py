# cffi's setuptools hook (cffi_modules) has no pyproject.toml spelling yet; everything else
# about the distribution lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
