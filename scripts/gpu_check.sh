#!/usr/bin/env bash
# GPU check, at most 10 minutes on one CUDA GPU: the tests that skip without CUDA, then GPU figures:
# batched detection images/s at min face 20 on 1024 x 768 images, training samples/s of each net
# with the store on the device (AMP on and off), and R-Net mining time.
# Usage, from the repository root after scripts/link_kit.sh: scripts/gpu_check.sh
# Each step has its own time limit (540 s together, so the whole stays under 10 minutes); a step
# that fails or runs out of time is named at the end and the script exits 1. Without a CUDA GPU it
# stops at once with exit status 2.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to PyTorch here (torch.cuda.is_available() is False); nothing run" >&2
    exit 2
fi
if [ ! -d data/widerface/WIDER_val/images ]; then
    echo "gpu_check: data/widerface missing: run scripts/link_kit.sh first" >&2
    exit 2
fi

failed=()
step() {  # step NAME SECONDS COMMAND...: run with a time limit, remember a failure
    local name="$1" limit="$2"
    shift 2
    echo
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    local status=$?
    echo "-- $name: exit $status after $((SECONDS - start))s"
    [ "$status" -eq 0 ] || failed+=("$name (exit $status$([ "$status" -eq 124 ] && echo ', out of time'))")
}

"$python" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

# Tests that need CUDA: they skip without it, so select them by their skip reason's condition.
step "CUDA tests" 90 "$python" -m pytest -q -p no:cacheprovider -rs -k "cuda" tests/

# Detection on 1024 x 768 images: the first 64 WIDER_val images resized to exactly that size.
images="$(mktemp -d)"
trap 'rm -rf "$images"' EXIT
"$python" - "$images" <<'PY'
import sys
from pathlib import Path

import cv2

files = sorted(Path("data/widerface/WIDER_val/images").rglob("*.jpg"))[:64]
for index, path in enumerate(files):
    cv2.imwrite(f"{sys.argv[1]}/{index:03d}.jpg", cv2.resize(cv2.imread(str(path)), (1024, 768)))
PY
step "detection, 1024 x 768, min face 20" 120 "$python" -m mtcnn bench detect --device cuda --images "$images" \
    --count 64 --min-face-sizes 20 --batch-sizes 1 8 32 --repeats 3 --no-compare

# Training steps with the samples on the GPU, mixed precision on and off.
for amp in true false; do
    step "training, store on device, amp=$amp" 80 "$python" -m mtcnn bench train --device cuda --steps 20 \
        --repeats 3 --set store_on_device=true amp="$amp"
done

# R-Net mining: P-Net (shipped weights) over the kit's train images, on the GPU.
step "R-Net mining" 170 "$python" -m mtcnn bench prep --stage rnet --pnet shipped --device cuda --repeats 1

echo
if [ "${#failed[@]}" -ne 0 ]; then
    printf 'gpu_check: failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "gpu_check: all steps passed in ${SECONDS}s"
