#!/usr/bin/env bash
# The main job: generate the embedded toy COCO set, train Mask R-CNN + Dual-ViT on it, evaluate bbox/segm mAP and
# save prediction pictures. Run through `make demo` (which sets up .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
config=configs/toy/maskrcnn_dualvit_toy.py
work=${DEMO_WORK_DIR:-work_dirs/demo}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}

echo "== 1/3 toy COCO data"
"$py" tools/generate_toy_data.py coco --out data/toy_coco
echo "== 2/3 training $config (CPU: a few minutes)"
rm -rf "$work"
"$py" tools/train.py "$config" --work-dir "$work" --cfg-options train_cfg.val_interval=100000
echo "== 3/3 evaluating the last checkpoint"
"$py" tools/test.py "$config" "$work/$(cat "$work/last_checkpoint" | xargs basename)" --work-dir "$work/test" \
    --show-dir "$work/predictions" 2>&1 | tee "$work/test.log" | grep -E "coco/(bbox|segm)_mAP|Average Precision" || true
echo
echo "bbox / segm mAP on the toy val split:"
grep -oE "coco/(bbox|segm)_mAP: [0-9.]+" "$work/test.log" | sed 's/^/  /'
echo "prediction pictures: $work/predictions"
