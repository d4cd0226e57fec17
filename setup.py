"""Build hook: setuptools needs setup.py to take cffi_modules (the native bindings)."""

from setuptools import setup

setup(
    cffi_modules=[
        "native/build_g711.py:ffibuilder",
        "native/build_opus.py:ffibuilder",
        "native/build_resample.py:ffibuilder",
    ]
)
