"""Only the optional C kernel lives here; everything else is in pyproject.toml.

If no C compiler is available the build still succeeds and the codec uses its
numpy kernels (same bytes, slower)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("dispersiond.codec._splitc", ["dispersiond/codec/_splitc.c"],
                             optional=True, extra_compile_args=["-O3"])])
