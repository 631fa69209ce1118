"""Build the optional Cython extension; all metadata lives in pyproject.toml.

Set DLMS_BRIDGE_NO_EXTENSIONS=1 to build and install the pure-Python twin only.
"""

import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("DLMS_BRIDGE_NO_EXTENSIONS", "") in ("", "0"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension("codec._hdlc_c", ["codec/_hdlc_c.pyx"], extra_compile_args=["-O3"]),
            Extension("codec._steady_c", ["codec/_steady_c.pyx"], extra_compile_args=["-O3"]),
        ],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )

setup(ext_modules=ext_modules)
