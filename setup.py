"""Build shim: the cffi extension `nxstore._native` is compiled from native/ at install."""

from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
