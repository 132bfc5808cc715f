"""Builds mason's one compiled module, the limits check.  It is optional: if no compiler is
available the package still works, with the pure-Python check giving identical results."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("mason._limits", ["src/mason/_limits.c"], optional=True),
    Extension("mason._scan", ["src/mason/_scan.c"], optional=True),
])
