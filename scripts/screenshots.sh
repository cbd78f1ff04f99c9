#!/usr/bin/env bash
# The README's pictures: TensorBoard's HParams, time-series and images pages and report.md, as a reader sees
# them, rendered in headless Chromium (Debian's `chromium` package), written to docs/img/. Not part of `make test`.
#
#   scripts/screenshots.sh                      # runs the demo's sweep first (make demo's flags, ~3 min on 2 cores)
#   scripts/screenshots.sh results/demo-...     # or pictures of an experiment you have
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=docs/img
command -v chromium >/dev/null || { echo "error: chromium not found (Debian: apt-get install chromium)" >&2; exit 2; }
test -x "$PY" || { echo "error: $PY not found: run make venv first" >&2; exit 2; }

experiment=${1:-}
work=$(mktemp -d)
trap 'kill "${tb_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
if [ -z "$experiment" ]; then
    demo_flags=$(make -pn 2>/dev/null | sed -n 's/^DEMO_FLAGS := //p')
    # shellcheck disable=SC2086  # the flags are words
    "$PY" tune_main.py $demo_flags --storage-path "$work/results" --name screenshots
    experiment="$work/results/screenshots"
fi
test -f "$experiment/report.md" || { echo "error: $experiment: no report.md (not a finished sweep?)" >&2; exit 2; }

# TensorBoard on the loopback only, on a free port
port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$PY" -m tensorboard.main --logdir "$experiment" --host 127.0.0.1 --port "$port" >"$work/tensorboard.log" 2>&1 &
tb_pid=$!
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.5; done

shot() {  # url, file: a 1400x900 page once its scripts have run (WebGL in software: TensorBoard draws its
    # charts with it, and without a GPU they come out empty)
    chromium --headless --no-sandbox --use-angle=swiftshader --enable-unsafe-swiftshader --hide-scrollbars \
        --window-size=1400,900 --virtual-time-budget=15000 --screenshot="$2" "$1" 2>/dev/null
}
mkdir -p "$OUT"
shot "http://127.0.0.1:$port/#hparams" "$OUT/tensorboard-hparams.png"
shot "http://127.0.0.1:$port/#timeseries" "$OUT/tensorboard-time-series.png"
shot "http://127.0.0.1:$port/#images" "$OUT/tensorboard-images.png"

# report.md as a page: its plots are files next to it
"$PY" - "$experiment" "$work/report.html" <<'EOF'
import sys
from pathlib import Path

import markdown

experiment, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
body = markdown.markdown((experiment / "report.md").read_text(), extensions=["tables"])
style = ("body{font-family:sans-serif;max-width:1300px;margin:20px auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:640px}")
out.write_text(f'<html><head><base href="file://{experiment}/"><style>{style}</style></head><body>{body}</body></html>')
EOF
shot "file://$work/report.html" "$OUT/report.png"
# the report's own plots of the demo: the best model's predictions (nearest-neighbour: pixels kept) and val/iou
"$PY" - "$experiment" "$OUT" <<'EOF'
import sys
from pathlib import Path

from PIL import Image

experiment, out = Path(sys.argv[1]), Path(sys.argv[2])
with Image.open(experiment / "report_predictions.png") as image:
    image.convert("RGB").resize((image.width * 2 // 3, image.height * 2 // 3), Image.NEAREST).save(
        out / "demo-predictions.png")
with Image.open(experiment / "report_val_iou.png") as image:
    image.convert("RGB").save(out / "demo-val-iou.png")
EOF
# small files for the repository: 1000 px wide, 256 colours
"$PY" - "$OUT"/*.png <<'EOF'
import sys

from PIL import Image

for path in sys.argv[1:]:
    with Image.open(path) as image:
        width = min(1000, image.width)  # never enlarged
        small = image.convert("RGB").resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    small.quantize(256).save(path, optimize=True)
EOF
ls -l "$OUT"
