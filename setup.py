"""The C library in native/ is compiled into the cffi extension qconv.runtime._qrt by this build."""

from setuptools import setup

setup(cffi_modules=["runtime/_native_build.py:ffibuilder"])
