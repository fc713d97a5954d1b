"""Check an installed mmdualvit stack: mmcv's compiled ops work with this torch, in the expected flavour.

    python tools/install/check_env.py [--flavour cpu|cu130|...] [--ops-only]

Exit status 0 when everything works, 1 with the reason on stderr otherwise. setup_env.sh uses it both to decide
whether a candidate mmcv wheel fits (``--ops-only``) and as the final install check.
"""
import argparse
import sys


def check_mmcv_ops(flavour):
    """Run mmcv's ``nms`` on CPU, and on a CUDA tensor when a GPU is visible; return a one-line summary."""
    import torch
    from mmcv.ops import get_compiling_cuda_version, nms

    compiled_cuda = get_compiling_cuda_version()  # 'not available' for a CPU-only build of mmcv._ext
    built = 'cpu' if compiled_cuda == 'not available' else 'cu' + compiled_cuda.replace('.', '')
    if flavour is not None and built != flavour:
        raise RuntimeError(f'mmcv._ext was built for {built}, this environment needs {flavour}')
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    for device in devices:
        _, keep = nms(boxes.to(device), scores.to(device), 0.5)
        if keep.tolist() != [0, 2]:
            raise RuntimeError(f'mmcv nms on {device} returned {keep.tolist()}, expected [0, 2]')
    return f'mmcv ops ({built}) work on {", ".join(devices)}'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--flavour', help='expected build of mmcv._ext: cpu or cuXYZ (default: do not check)')
    parser.add_argument('--ops-only', action='store_true', help='check mmcv ops only, not the rest of the stack')
    args = parser.parse_args()
    try:
        summary = check_mmcv_ops(args.flavour)
        if not args.ops_only:
            import mmcv
            import mmdet
            import mmengine
            import mmpretrain
            import mmseg  # their mmcv version asserts run at import
            import torch

            from mmdualvit.deps import problems
            notes = problems()[1]  # releases outside the supported ranges, or two distributions of one package
            if notes:
                raise RuntimeError(' '.join(notes))
            summary = (f'torch {torch.__version__}, mmcv {mmcv.__version__}: {summary}; mmengine '
                       f'{mmengine.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, '
                       f'mmpretrain {mmpretrain.__version__}, all supported, mmdualvit imports')
    except Exception as exc:  # any failure means "this environment does not work": report it, exit 1
        print(f'[check_env] {type(exc).__name__}: {exc}', file=sys.stderr)
        return 1
    print(f'[check_env] ok: {summary}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
