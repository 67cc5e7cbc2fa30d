"""Analysis and evaluation as independent units, run serially, in a local process pool or on a Ray cluster."""

from qconv.converter.work.executors import Executor, make_executor
from qconv.converter.work.units import UNIT_KINDS, Shared, Unit, register

__all__ = ["Executor", "Shared", "UNIT_KINDS", "Unit", "make_executor", "register"]
