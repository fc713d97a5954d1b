"""Toy datasets generated on the fly, so demos and tests need no download."""
from .toy import TOY_CLASSES, TOY_PALETTE, make_toy_ade, make_toy_coco

__all__ = ['TOY_CLASSES', 'TOY_PALETTE', 'make_toy_ade', 'make_toy_coco']
