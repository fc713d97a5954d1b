"""Sequencer2D-S forward latency: mmdualvit vs timm's ``sequencer2d_s``, same weights, same run (needs timm).

Both models get the same deterministic weights; the script first checks that their outputs agree (our stage-4
output normalised by ``norm`` equals timm's ``forward_features``), then times forward passes at each size
(median of --runs after a warm-up) and prints the latency ratio ours / timm.

    python tools/analysis/benchmark_sequencer.py [--sizes 224x224 800x1344] [--runs 5] [--threads N]
"""
import argparse
import json
import statistics
import time

import torch

from mmdualvit.models import Sequencer2D


def timed(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--sizes', nargs='+', default=['224x224', '800x1344'])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--json')
    args = parser.parse_args()
    import timm
    from timm.models.sequencer import checkpoint_filter_fn
    torch.set_num_threads(args.threads)

    ours = Sequencer2D(arch='s', pyramid='native', out_indices=(3, )).eval()
    ours.init_weights()
    theirs = timm.create_model('sequencer2d_s', pretrained=False).eval()
    official = {**ours.state_dict(), 'head.weight': torch.zeros(1000, 384), 'head.bias': torch.zeros(1000)}
    theirs.load_state_dict(checkpoint_filter_fn(official, theirs), strict=True)
    assert Sequencer2D.convert_checkpoint(checkpoint_filter_fn(official, theirs)).keys() == official.keys()

    rows = []
    for size in args.sizes:
        x = torch.randn(1, 3, *map(int, size.split('x')))
        with torch.no_grad():
            mine = ours.norm(ours(x)[0].permute(0, 2, 3, 1))
            ref = theirs.forward_features(x)
            max_diff = (mine - ref).abs().max().item()
            ours_t = timed(lambda: ours(x), args.runs)
            timm_t = timed(lambda: theirs.forward_features(x), args.runs)
        rows.append(dict(size=size, ours_s=ours_t[0], timm_s=timm_t[0], ratio=ours_t[0] / timm_t[0],
                         max_abs_diff=max_diff))
        print(f'{size:>9}: ours {ours_t[0]:.3f}s [{ours_t[1]:.3f}-{ours_t[2]:.3f}]  timm {timm_t[0]:.3f}s '
              f'[{timm_t[1]:.3f}-{timm_t[2]:.3f}]  ratio {ours_t[0] / timm_t[0]:.2f}  max |diff| {max_diff:.1e}')
    if args.json:
        with open(args.json, 'w') as fh:
            json.dump(dict(threads=args.threads, timm=timm.__version__, rows=rows), fh, indent=1)


if __name__ == '__main__':
    main()
