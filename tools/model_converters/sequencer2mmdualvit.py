"""Convert a Sequencer2D checkpoint (official release .pth or timm .pth/.safetensors) to mmdualvit's naming.

    python tools/model_converters/sequencer2mmdualvit.py model.safetensors checkpoints/sequencer2d_s.pth
"""
from mmdualvit.checkpoint import converter_cli
from mmdualvit.models import Sequencer2D

if __name__ == '__main__':
    converter_cli(Sequencer2D, __doc__.strip().splitlines()[0])
