"""Builds mason's compiled modules: the limits check (_limits), the one-pass load of plain
data (_plainload), dumps and loads as compiled callables (_entry), the containers' CRC-32 (_crc32) and the
scanner's survey (_scan).  All are optional: without a compiler the
package still works, with pure-Python twins that give identical results (the tests hold them
to it), and loads takes the check-then-engine way that _plainload shortens."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("mason._limits", ["src/mason/_limits.c"], depends=["src/mason/_pickle_bytes.h"],
              optional=True),
    Extension("mason._plainload", ["src/mason/_plainload.c"],
              depends=["src/mason/_pickle_bytes.h"], optional=True),
    Extension("mason._entry", ["src/mason/_entry.c"], optional=True),
    Extension("mason._crc32", ["src/mason/_crc32.c"], optional=True),
    Extension("mason._scan", ["src/mason/_scan.c"], depends=["src/mason/_pickle_bytes.h"],
              optional=True),
])
