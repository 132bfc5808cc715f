"""Builds mason's compiled modules: the limits check (_limits), the one-pass load of plain
data (_plainload), dumps and loads as compiled callables (_entry), the containers' CRC-32 (_crc32), the
scanner's survey (_scan) and the store's lean SQLite connection (store._statements, which
needs SQLite's header: Debian's libsqlite3-dev).  All are optional: without a compiler the
package still works, with pure-Python twins that give identical results (the tests hold them
to it), and loads takes the check-then-engine way that _plainload shortens."""

import os

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
] + ([] if os.name == "nt" else [
    # Linked to the system's SQLite, the library the sqlite3 module uses (checked at run time).
    Extension("mason.store._statements", ["src/mason/store/_statements.c"],
              libraries=["sqlite3"], optional=True),
]))
