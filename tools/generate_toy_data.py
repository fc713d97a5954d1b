"""Write the seeded toy shape datasets from a checkout: a thin wrapper over ``python -m mmdualvit.datasets.toy``.

    python tools/generate_toy_data.py all                       # data/toy_coco and data/toy_ade
"""
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root is one level above tools/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdualvit.datasets.toy import main  # noqa: E402

if __name__ == '__main__':
    main()
