"""Print the largest differences between our systems and the stored official outputs (tests/data/official/), the
figures of docs/fidelity.md's table. Runs in our environment:

    .venv/bin/python dev/fidelity_report.py [--systems maskrcnn upernet ...]

It runs tests/test_fidelity.py's comparisons with every bound set to 0, so each reports the size of its difference.
"""
import argparse
import os.path as osp
import sys

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import tests.test_fidelity as fidelity  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--systems', nargs='+', default=sorted(fidelity.SYSTEMS))
    args = parser.parse_args(argv)
    fidelity.BOX_TOL = fidelity.SCORE_TOL = fidelity.LOGIT_TOL = fidelity.LOSS_TOL = fidelity.GRAD_NORM_TOL = 0.
    fidelity.MASK_PIXELS = 0
    fidelity.BOUNDS = {system: dict(box=0., score=0.) for system in fidelity.SYSTEMS}
    from mmdualvit.building import build_from_config
    for system in args.systems:
        info = fidelity.SYSTEMS[system]
        model, cfg = build_from_config(str(fidelity.REPO / info['config']))
        model.load_state_dict(fidelity.official_weights(system), strict=True)
        model.eval()
        for image in sorted(info['outputs']):
            official = np.load(fidelity.OFFICIAL / f'{system}_{image}.npz')
            inputs, pred = fidelity.run_ours(model, cfg, fidelity.image_path(image))
            faults = fidelity.input_faults(inputs, info['outputs'][image], cfg)
            faults += fidelity.output_faults(system, pred, official)
            print(f'{system} {image}: {"; ".join(faults) or "identical"}', flush=True)
        if 'train' in info:
            faults = fidelity.training_faults(system, *fidelity.training_step(system))
            print(f'{system} training step: {"; ".join(faults) or "identical"}', flush=True)


if __name__ == '__main__':
    main()
