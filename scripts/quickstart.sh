#!/usr/bin/env bash
# The README's first command: sign-binarize the bundled sample embeddings at several code
# lengths, measure Recall@10 against exact cosine neighbours (with and without re-ranking),
# search, and export the codes for FAISS. Output goes to checkpoints/quickstart-codes/.
#
#     bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p bllm-cli
bllm=target/release/bllm
data=datasets/sample-clustered
out=checkpoints/quickstart-codes
mkdir -p "$out"

run() { echo "+ $*" >&2; "$@"; }

for bits in 32 64 128; do
  run "$bllm" codes pack "$data/db.npy" --out "$out/db-$bits" --bits "$bits"
  run "$bllm" codes pack "$data/queries.npy" --out "$out/queries-$bits" --bits "$bits"
  run "$bllm" codes recall --db-float "$data/db.npy" --queries-float "$data/queries.npy" \
    --db "$out/db-$bits" --queries "$out/queries-$bits" -k 10 --rerank 100 \
    --json "$out/recall-$bits.json"
done
run "$bllm" codes search --db "$out/db-128" --queries "$out/queries-128" -k 10 --out "$out/neighbors-128.tsv"
run "$bllm" codes export "$out/db-128" --format faiss --out "$out/db-128.faiss"

echo
echo "| bits | Recall@10 | Recall@10 after re-ranking top 100 |"
echo "|---:|---:|---:|"
for bits in 32 64 128; do
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("| %d | %.4f | %.4f |" % (r["bits"], r["recall_at_k"], r["recall_after_rerank"]))' "$out/recall-$bits.json"
done
echo
echo "Codes, manifests, neighbours and a FAISS index are in $out/."
echo "(These are plain sign codes of the first N dimensions: the baseline that learned heads must beat.)"
