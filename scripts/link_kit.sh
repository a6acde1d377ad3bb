#!/usr/bin/env bash
# Link the real-data kit (WIDER FACE subset, CNN_FacePoint landmarks, samples, reference weights)
# into data/, where the shipped configs look for datasets. Usage: scripts/link_kit.sh [KIT_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kit="$(cd "${1:-$root/../shared/data}" && pwd)"
for name in widerface landmarks samples reference_weights reference_detections.json; do
    if [ -e "$kit/$name" ]; then
        ln -sfn "$kit/$name" "$root/data/$name"
    else
        echo "link_kit: $kit/$name not found; skipped" >&2
    fi
done
echo "linked $kit into $root/data"
