"""Toy datasets generated on the fly, so demos and tests need no download.

The names are loaded on first use rather than imported here, so that ``python -m mmdualvit.datasets.toy`` runs the
module once as ``__main__`` (an eager import would load it twice and make runpy warn).
"""
import importlib

__all__ = ['TOY_CLASSES', 'TOY_PALETTE', 'TOY_SEG_CLASSES', 'TOY_SEG_PALETTE', 'make_toy_ade', 'make_toy_coco']


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module('.toy', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
