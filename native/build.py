"""cffi builder for pyrun._native (API mode, compiled at install time).

setup.py names this module in ``cffi_modules``; ``python setup.py build_ext
--inplace`` builds it in a checkout.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(
    os.path.join("native", f) for f in os.listdir(HERE) if f.endswith(".c")
)

ffi = FFI()
with open(os.path.join(HERE, "pyrun.cdef")) as f:
    ffi.cdef(f.read())
ffi.set_source(
    "pyrun._native",
    '#include "pyrun.h"\n#include <seccomp.h>',
    sources=SOURCES,
    libraries=["seccomp"],
    include_dirs=[HERE],
    extra_compile_args=["-O2", "-Wall", "-std=gnu11"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
