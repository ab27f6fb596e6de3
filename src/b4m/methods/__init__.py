"""Every method b4m trains or computes, one module each, behind one contract (:mod:`b4m.methods.base`).

``all_methods()`` lists the registry; ``run_method(id, **options)`` runs one (the CLI's ``b4m run ID``).
"""

from b4m.methods.base import (
    NEEDS,
    Fitted,
    Method,
    MethodInfo,
    MethodOptions,
    all_methods,
    get_method,
    register,
)

__all__ = [
    "NEEDS",
    "Fitted",
    "Method",
    "MethodInfo",
    "MethodOptions",
    "all_methods",
    "fit_cached",
    "fit_method",
    "get_method",
    "register",
    "run_method",
]


def run_method(method_id: str, config=None, progress: bool = True, **options):  # noqa: ANN001, ANN201
    """Run a registered method by id; returns its adapter file (see :func:`b4m.methods.common.run_method`)."""
    from b4m.methods.common import run_method as _run

    return _run(method_id, config, progress=progress, **options)


def fit_method(method_id: str, config=None, pipe=None, progress: bool = True, **options):  # noqa: ANN001, ANN201
    """Like :func:`run_method`, returning the :class:`Fitted` result (file, merged update, method info)."""
    from b4m.methods.common import fit_method as _fit

    return _fit(method_id, config, pipe=pipe, progress=progress, **options)


def fit_cached(method_id: str, cache, pipe=None, progress: bool = False, **options):  # noqa: ANN001, ANN201
    """Fit ``method_id`` once per identity under ``cache`` (see :func:`b4m.methods.cache.fit_cached`)."""
    from b4m.methods.cache import fit_cached as _fit

    return _fit(method_id, cache, pipe=pipe, progress=progress, **options)
