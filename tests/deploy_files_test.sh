#!/bin/sh
# The deploy files are valid, and every aeserve metric they query is one the server defines.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
promtool check rules "$ROOT/deploy/prometheus/alerts.yml"
promtool check config "$ROOT/deploy/prometheus/prometheus.yml"
python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$ROOT/deploy/grafana/aeserve-dashboard.json"
missing=0
for name in $(grep -ohE 'aeserve_[a-z_]+' "$ROOT/deploy/prometheus/alerts.yml" "$ROOT/deploy/grafana/aeserve-dashboard.json" | sed -E 's/_(bucket|sum|count)$//' | sort -u); do
  if ! grep -rqF "\"$name\"" "$ROOT/server"; then
    echo "deploy files query $name, which the server does not define"
    missing=1
  fi
done
[ "$missing" -eq 0 ]
echo "deploy files: OK"
