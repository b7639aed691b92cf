#!/usr/bin/env bash
# The GPU check behind docs/performance.md ("On a GPU"), one script, run from the repository root
# on a machine with one CUDA GPU and >= 16 cores:
#
#   OUT=gpu_out DATA=../shared/data bash docs/bench/gpu_check.sh
#
# 1. the machine (nvidia-smi, torch);
# 2. `pcn bench --device cuda --runs 1 8 64` alone on the machine (its figures are the ones
#    quoted: per-run throughput of packs of 8 and 64 runs against one run alone);
# 3. then at the same time (so their wall times are not speed figures):
#    a. the test suite with CUDA visible (tests/test_cuda.py runs only there), 3 xdist workers;
#    b. the test study, `--configfile config/test.yaml --config device=cuda`;
#    c. full-MNIST training on the GPU: config/full_mnist.yaml's $ARM arm (amortised or zeros),
#       seeds $SEEDS (docs/results.md), 10 jobs sharing the GPU, cut off after $FULL_S seconds
#       (the zeros arm, T = 100, has five times the inference steps: not yet run on a GPU; expect
#       a seed of it to need more than one 10-minute call, so split its grid).
# Everything lands in $OUT: logs, bench JSON, and tarballs of the studies' small outputs.
# Needs snakemake, pytest-xdist and the `pcn` dependencies importable by python3; a machine with
# no package index gets them as wheels first (WHEELS=dir: `pip install --target /tmp/site`).
set -u
OUT=${OUT:-gpu_out}; DATA=${DATA:-../shared/data}; SEEDS=${SEEDS:-[1]}; ARM=${ARM:-amortised}; FULL_S=${FULL_S:-330}
TEST_S=${TEST_S:-330}; STUDY_S=${STUDY_S:-240}; BENCH_S=${BENCH_S:-120}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
REPO=$PWD
DATA=$(cd "$DATA" && pwd)
export PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
command -v python >/dev/null || { mkdir -p /tmp/pybin && ln -sf "$(command -v python3)" /tmp/pybin/python && export PATH=/tmp/pybin:$PATH; }
# the tests read ../shared/data/{mnist,fashionmnist}
if [ ! -e "$REPO/../shared/data/mnist" ]; then mkdir -p "$REPO/../shared" && ln -sfn "$DATA" "$REPO/../shared/data"; fi
stamp() { echo "== $(date +%T) $*"; }

{ stamp machine; nvidia-smi; nproc; free -g
  python3 -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  snakemake --version; } > "$OUT/machine.txt" 2>&1

stamp bench
timeout "$BENCH_S" python3 -m pcn bench --device cuda --quick --runs 1 8 64 --json "$OUT/bench-cuda.json" > "$OUT/bench.log" 2>&1
echo "bench rc $?" >> "$OUT/bench.log"

stamp "tests, test study, full MNIST (concurrently)"
( start=$(date +%s)
  timeout "$TEST_S" python3 -m pytest -q -n 3 -p no:cacheprovider -rfEs --durations=15 > "$OUT/pytest.log" 2>&1
  echo "pytest rc $? in $(( $(date +%s) - start )) s" >> "$OUT/pytest.log" ) &
( start=$(date +%s); d=/tmp/study_test; mkdir -p $d
  timeout "$STUDY_S" snakemake -s "$REPO/workflow/Snakefile" -d $d --configfile "$REPO/config/test.yaml" \
    --config device=cuda "data_dir=$DATA/{dataset}" --cores 2 --resources gpu=2 > $d/snakemake.log 2>&1
  echo "test study rc $? in $(( $(date +%s) - start )) s" >> $d/snakemake.log
  tar -czf "$OUT/study_test.tgz" -C $d --exclude='*.pt' --exclude='*.npz' --exclude=results/checkpoints --exclude=results/report.html snakemake.log results 2>/dev/null
  tail -3 $d/snakemake.log ) &
( start=$(date +%s); d=/tmp/full_mnist; mkdir -p $d
  python3 - "$REPO/config/full_mnist.yaml" "$d/config.yaml" "$SEEDS" "$ARM" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["grid"]["init"] = [sys.argv[4]]
cfg["grid"]["seed"] = yaml.safe_load(sys.argv[3])
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
EOF
  timeout "$FULL_S" snakemake -s "$REPO/workflow/Snakefile" -d $d --configfile $d/config.yaml \
    --config "data_dir=$DATA/{dataset}" --cores 10 --resources gpu=10 --keep-going > $d/snakemake.log 2>&1
  echo "full MNIST rc $? in $(( $(date +%s) - start )) s" >> $d/snakemake.log
  tar -czf "$OUT/full_mnist.tgz" -C $d --exclude='*.pt' --exclude='*.npz' --exclude=results/checkpoints --exclude=results/report.html snakemake.log config.yaml results 2>/dev/null
  tail -3 $d/snakemake.log ) &
wait
stamp done
