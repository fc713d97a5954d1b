"""Convert an official Dual-ViT ImageNet checkpoint (e.g. checkpoint-309.pth.tar) to a clean tensors-only file.

    python tools/model_converters/dualvit2mmdualvit.py checkpoint-309.pth.tar checkpoints/dualvit_s.pth
"""
from mmdualvit.checkpoint import convert_dualvit, converter_cli

if __name__ == '__main__':
    converter_cli(convert_dualvit, __doc__.strip().splitlines()[0])
