#!/bin/bash
# The CTR demonstration of the embedding lifecycle (docs/embedding_lifecycle.md): the same job
# with and without a lifecycle (admission at the second push, a capacity per server), each a
# real local cluster (tessera local); the one with the lifecycle must reach a test AUC within
# 0.005 of the other while holding at most 30% of its embedding rows.
# Usage: ctr_lifecycle_demo.sh TESSERA_BINARY SOURCE_DIR
set -euo pipefail
tessera=$1
src=$2
run() {  # prints "AUC ROWS" of the job
  local out
  out=$("$tessera" local --job="$src/examples/$1" 2>&1) || { echo "$out" | tail -20 >&2; exit 1; }
  local auc rows
  auc=$(echo "$out" | sed -n 's/^summary: .*test AUC \([0-9.]*\).*/\1/p')
  rows=$(echo "$out" | awk '$1 == "ctr_vocab.emb" && $2 == "sparse" {print $3}')
  [ -n "$auc" ] && [ -n "$rows" ] || { echo "$out" | tail -30 >&2; echo "no AUC or rows in the output of $1" >&2; exit 1; }
  echo "$auc $rows"
}
read -r base_auc base_rows < <(run ctr_vocab.textproto)
read -r auc rows < <(run ctr_vocab_lifecycle.textproto)
echo "without a lifecycle: test AUC $base_auc, $base_rows rows"
echo "with admission at 2 and 120,000 rows a server: test AUC $auc, $rows rows"
awk -v a="$auc" -v b="$base_auc" -v r="$rows" -v br="$base_rows" 'BEGIN {
  d = a - b; if (d < 0) d = -d
  printf "AUC difference %.4f (at most 0.005), rows %.1f%% of the job without (at most 30%%)\n", d, 100 * r / br
  exit !(d <= 0.005 && r <= 0.3 * br && r > 0)
}'
