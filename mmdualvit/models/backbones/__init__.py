from .dual_vit import DualViT
from .sequencer2d import Sequencer2D

__all__ = ['DualViT', 'Sequencer2D']
