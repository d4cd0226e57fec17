"""Type stub for the cffi extension built from native/build_g722.py (no stubs of its own)."""

from typing import Any

ffi: Any
lib: Any
