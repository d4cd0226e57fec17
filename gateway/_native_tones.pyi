"""Type stub for the cffi extension built from native/build_tones.py (no stubs of its own)."""

from typing import Any

ffi: Any
lib: Any
