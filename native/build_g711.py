"""cffi build script (API, out-of-line mode) for the G.711 codec in native/g711.c.

setuptools picks it up through ``cffi_modules`` in setup.py and compiles the
extension ``gateway._native_g711``; ``pip install -e .`` rebuilds it in
place after an edit to the C sources.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

NATIVE_DIR = Path(__file__).resolve().parent
SOURCE = NATIVE_DIR / "g711.c"
HEADER = NATIVE_DIR / "g711.h"

# Kept in step with g711.h; API mode compiles these against the header, so a
# mismatch fails the build instead of corrupting memory at run time.
CDEF = """
void alaw_encode(const int16_t *pcm, uint8_t *out, size_t n);
void alaw_decode(const uint8_t *in, int16_t *pcm, size_t n);
void ulaw_encode(const int16_t *pcm, uint8_t *out, size_t n);
void ulaw_decode(const uint8_t *in, int16_t *pcm, size_t n);
void alaw_to_ulaw(const uint8_t *in, uint8_t *out, size_t n);
void ulaw_to_alaw(const uint8_t *in, uint8_t *out, size_t n);
"""


def _source_path(path: Path) -> str:
    """Path to hand to setuptools: relative when under the working directory.

    setuptools runs this from the project root and places object files by
    source path, so a relative path keeps them inside build/; an absolute
    path is used only when the script is driven from somewhere else.
    """
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "gateway._native_g711",
    '#include "g711.h"',
    sources=[_source_path(SOURCE)],
    depends=[_source_path(HEADER)],
    include_dirs=[str(NATIVE_DIR)],
    extra_compile_args=["-O2"],
)
