# What every study script shares; each starts with `source studies/run.sh`. Run the scripts from
# nanoAE's folder (where train.py is):
#   DATA=dir     --data-dir of every run (default: ./data, where train.py downloads to)
#   OUT=dir      where the study's run directories go (default: out/<study>)
#   QUICK=1      every run a smoke test (64 training images, one epoch): what the tests run
set -euo pipefail
if [ ! -f train.py ]; then
    echo "run the studies from nanoAE's folder, where train.py is: bash studies/$(basename "$0")" >&2
    exit 2
fi
DATA=${DATA:-./data}

# run NAME FLAGS...: python train.py FLAGS --data-dir $DATA --out-dir $OUT/NAME. A run that finished
# (its results.json is there) is kept, and one that stopped halfway continues with --resume, so a study
# stopped at any point goes on where it was when started again.
run() {
    local out="$OUT/$1"
    shift
    if [ -f "$out/results.json" ]; then
        echo "== $out: finished earlier, kept"
        return
    fi
    if [ -f "$out/ckpt.pt" ]; then
        set -- "$@" --resume
    fi
    if [ -n "${QUICK:-}" ]; then  # a from-scratch run (--epochs 0) stays untrained
        set -- "$@" --train-size 64 --probe-size 64 --finetune-epochs 1
        [[ " $* " == *" --epochs 0 "* ]] || set -- "$@" --epochs 1
    fi
    echo "== python train.py $* --data-dir $DATA --out-dir $out"
    python train.py "$@" --data-dir "$DATA" --out-dir "$out"
}

# analyze RUN_NAMES...: python analyze.py over the study's runs (and $ANALYZE_FLAGS); report.md and the
# figures comparing them go to $OUT
analyze() {
    local dirs=()
    for name in "$@"; do
        dirs+=("$OUT/$name")
    done
    python analyze.py "${dirs[@]}" --out "$OUT" ${ANALYZE_FLAGS:-} ${QUICK:+--tsne-per-class 5 --tsne-iters 250}
}
