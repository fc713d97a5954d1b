"""Convert an official Dual-ViT ImageNet checkpoint (e.g. checkpoint-309.pth.tar) to a clean tensors-only file.

    python tools/model_converters/dualvit2mmdualvit.py checkpoint-309.pth.tar checkpoints/dualvit_s.pth
"""
from mmdualvit.checkpoint import converter_cli
from mmdualvit.models import DualViT

if __name__ == '__main__':
    converter_cli(DualViT, __doc__.strip().splitlines()[0])
