"""mmdualvit: Dual-ViT and Sequencer2D backbones for mmdetection, mmsegmentation and mmpretrain."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name):
    """Requirement lines of requirements/<name>.txt, without comments and includes."""
    lines = (HERE / 'requirements' / name).read_text().splitlines()
    return [ln.split('#')[0].strip() for ln in lines if ln.split('#')[0].strip() and not ln.startswith('-')]


version = {}
exec((HERE / 'mmdualvit' / 'version.py').read_text(), version)

setup(
    name='mmdualvit',
    version=version['__version__'],
    description='Dual-ViT and Sequencer2D backbones for OpenMMLab detection and segmentation',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    # torch and the OpenMMLab packages are not install_requires: an environment has them already, built for its CUDA
    # and often under other distribution names (the OneDL forks: onedl-mmcv ...), which pip cannot tell apart from
    # missing ones, so it would install upstream mmcv/mmdet over them. `import mmdualvit` checks them instead
    # (mmdualvit/deps.py); `mmdualvit[openmmlab]` installs them into a fresh environment (OpenMMLab's convention).
    install_requires=read_requirements('runtime.txt'),
    extras_require={'openmmlab': read_requirements('torch.txt') + read_requirements('mminstall.txt'),
                    'tests': read_requirements('tests.txt') + read_requirements('onnx.txt'),  # tests.txt: -r onnx.txt
                    'optional': read_requirements('optional.txt'), 'onnx': read_requirements('onnx.txt')},
)
