"""Write the seeded toy shape datasets (COCO instances and/or ADE20K-layout semantic segmentation).

Examples::

    python tools/generate_toy_data.py all                       # data/toy_coco and data/toy_ade
    python tools/generate_toy_data.py coco --out data/toy_coco --num-train 200 --seed 1
    python tools/generate_toy_data.py ade --image-size 256 --num-val 32
"""
import argparse
import sys
import time
from pathlib import Path

# Run from a checkout without installing: the repository root is one level above tools/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdualvit.datasets.toy import make_toy_ade, make_toy_coco  # noqa: E402

DEFAULT_OUT = {'coco': 'data/toy_coco', 'ade': 'data/toy_ade'}


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line; see the module docstring for examples."""
    parser = argparse.ArgumentParser(description='Generate the seeded toy shape datasets (no download).')
    parser.add_argument('kind', choices=['coco', 'ade', 'all'], help='which dataset(s) to write')
    parser.add_argument(
        '--out',
        help='output folder (default data/toy_coco or data/toy_ade); for "all", a parent folder that gets '
        'toy_coco/ and toy_ade/')
    parser.add_argument('--num-train', type=int, default=40, help='training images (default 40)')
    parser.add_argument('--num-val', type=int, default=16, help='validation images (default 16)')
    parser.add_argument(
        '--image-size', type=int, nargs='+', default=[128], metavar='N', help='H [W] in pixels (default 128)')
    parser.add_argument('--seed', type=int, default=0, help='non-negative seed (default 0)')
    args = parser.parse_args(argv)
    if len(args.image_size) > 2:
        parser.error('--image-size takes one (square) or two (height width) values')
    return args


def main(argv=None) -> None:
    """Generate the requested dataset(s) and print where they went."""
    args = parse_args(argv)
    kinds = ['coco', 'ade'] if args.kind == 'all' else [args.kind]
    size = tuple(args.image_size) * (3 - len(args.image_size))  # one value means square
    makers = {'coco': make_toy_coco, 'ade': make_toy_ade}
    for kind in kinds:
        if args.out is None:
            out = DEFAULT_OUT[kind]
        elif args.kind == 'all':
            out = str(Path(args.out) / Path(DEFAULT_OUT[kind]).name)
        else:
            out = args.out
        start = time.perf_counter()
        info = makers[kind](out, num_train=args.num_train, num_val=args.num_val, image_size=size, seed=args.seed)
        elapsed = time.perf_counter() - start
        print(f'{kind}: wrote {out} in {elapsed:.2f}s (image size {size[0]}x{size[1]}, seed {args.seed})')
        for split in ('train', 'val'):
            s = info[split]
            files = s['ann_file'] if kind == 'coco' else s['ann_dir']
            print(f'  {split}: {s["num_images"]} images, {s["num_instances"]} shapes; images {s["img_dir"]}, '
                  f'annotations {files}')
        if kind == 'ade':
            print(f'  img_suffix={info["img_suffix"]!r} seg_map_suffix={info["seg_map_suffix"]!r} '
                  f'reduce_zero_label={info["reduce_zero_label"]}')


if __name__ == '__main__':
    main()
