"""The compiled libqrt (cffi API mode): `ffi` and `lib` for the rest of the package."""

from qconv.runtime._qrt import ffi, lib  # noqa: F401
