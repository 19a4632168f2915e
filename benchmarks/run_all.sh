#!/usr/bin/env bash
# Run every benchmark one after another, each alone, and keep the outputs.
#
# The whole study runs first, because the training, inference and
# calibration benchmarks read its dataset and bundles. Every step's output
# goes to OUT/NAME.txt, with the load average before and after it, so a
# reader can tell whether something else ran on the machine meanwhile.
# docs/benchmarks.md quotes these files.
#
# Usage: bash benchmarks/run_all.sh IOT23 [OUT]
#   IOT23  folder of IoT-23 flow logs (the `zeek/` samples must be in it)
#   OUT    output folder, default runs/benchmarks. It must not exist yet,
#          because a study that resumes would not time a whole run.

set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: bash benchmarks/run_all.sh IOT23 [OUT]" >&2
    exit 2
fi
data=$(realpath "$1")
out=$(realpath -m "${2:-runs/benchmarks}")
here=$(dirname "$(realpath "$0")")
if [[ -e $out ]]; then
    echo "$out already exists; remove it or name another output folder" >&2
    exit 2
fi
mkdir -p "$out"

step() {
    local name=$1
    shift
    {
        echo "\$ $*"
        echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$out/$name.txt"
    echo "== $name: $*" >&2

    "$@" 2>&1 | tee -a "$out/$name.txt"

    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/$name.txt"
}

{
    lscpu | grep -E '^(Model name|CPU family|Model|CPU\(s\)):'
    grep MemTotal /proc/meminfo
    python --version
    date -u +%Y-%m-%dT%H:%M:%SZ
} >"$out/machine.txt"

step study /usr/bin/time -v edgedp run --data "$data" --out "$out/study"
step prepare python "$here/bench_prepare.py" --data "$data" --repeats 5
step memory python "$here/bench_memory.py" --data "$data" --repeats 3
step memory-large python "$here/bench_memory.py" --data "$data" --repeats 3 \
    --rows 4000000
step train python "$here/bench_train.py" --data "$out/study/dataset" --repeats 5
step inference python "$here/bench_inference.py" --data "$out/study/dataset" \
    --work "$out/inference" --out "$out/bench-inference.json"
step serve python "$here/bench_serve.py" --data "$data"
step calibration python "$here/bench_calibration.py" "$out"/study/bundles/*seed0 \
    --out "$out/bench-calibration.json"
step gateway-install python "$here/check_gateway_install.py" --data "$data"

echo "outputs in $out" >&2
