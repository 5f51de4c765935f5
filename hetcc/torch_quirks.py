"""Narrow workarounds for torch behaviour hetcc cannot change, kept in one place so each can be
dropped when torch stops needing it."""
from __future__ import annotations

import contextlib
import logging
import warnings

LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
"""torch 2.13's message when anything constructs a ``LeafSpec``, the class it deprecated."""


@contextlib.contextmanager
def leafspec_warning_quieted():
    """Ignore torch's FutureWarning about ``LeafSpec`` for the duration, and nothing else.

    ``ExportedProgram.run_decompositions`` deep-copies the program's module call graph, whose
    tree specs hold the ``LeafSpec`` instances torch itself made; ``copy.deepcopy`` rebuilds them
    through ``LeafSpec.__new__``, which warns. hetcc never names ``LeafSpec``, so there is nothing
    to change on our side, and a plain ``torch.export.export(m, x).run_decompositions()`` warns the
    same. Other warnings, FutureWarnings included, still reach the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
        yield


FAKE_TENSOR_LOGGER = "torch._subclasses.fake_tensor"
"""The logger torch 2.13 writes a full traceback to, at ERROR, when an op fails on fake tensors
while ``torch.export`` traces (a shape mismatch in the model, for one), before it raises."""


class _BelowCritical(logging.Filter):
    def filter(self, record) -> bool:
        return record.levelno >= logging.CRITICAL


@contextlib.contextmanager
def fake_tensor_errors_quieted():
    """Keep torch's fake-tensor traceback log off the user's terminal for the duration.

    The same failure then reaches the caller as the exception torch raises, which hetcc explains in
    one paragraph (hetcc/capture.py); the log repeats it as some forty lines of torch internals.
    Each use adds a filter of its own to that one logger and removes it after, so compiles in
    several threads, or nested, leave the logger as they found it; its CRITICAL messages pass."""
    logger = logging.getLogger(FAKE_TENSOR_LOGGER)
    quiet = _BelowCritical()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
