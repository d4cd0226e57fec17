"""Build hook: setuptools needs setup.py to take cffi_modules (the native bindings).

Every ``native/build_*.py`` is one binding (DESIGN rule 4), so the list is the folder.
"""

from pathlib import Path

from setuptools import setup

NATIVE = Path(__file__).resolve().parent / "native"

setup(
    cffi_modules=[
        f"native/{script.name}:ffibuilder" for script in sorted(NATIVE.glob("build_*.py"))
    ]
)
