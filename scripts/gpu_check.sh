#!/usr/bin/env bash
# The GPU checks of --verify-ties in one command, on a machine with an NVIDIA GPU and a CUDA build of torch, from the
# project root (installed, or with PYTHONPATH=$PWD):
#
#     bash scripts/gpu_check.sh [OUTDIR]
#
# 1. the machine: GPU, driver, torch and its CUDA; the fixed costs of the GPU path (import, CUDA context, pinned memory);
# 2. tests/test_verify.py, all of it: test_cuda_matches_cpu (skipped without CUDA) holds the GPU to the numpy CPU path,
#    and the other tests show that `--device auto` choosing the GPU changes no result;
# 3. scripts/bench_verify.py: cpu (numpy, torch) against cuda, locally and over the test Hub server;
# 4. the command itself on the benchmark's gpt2-xl-sized checkpoint, with its wall time and peak RSS.
#
# Each step's output is also written to OUTDIR (default: the current folder). A failing step does not stop the next;
# the exit status is the first failure's.
set -uo pipefail
out=${1:-.}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
step() { # step NAME COMMAND...: run, tee to OUTDIR/NAME.txt, remember the first failure
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$status" -ne 0 ] || status=$rc
}

step machine sh -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; \
$py -c 'import sys, torch, numpy; print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no CUDA device\", \"numpy\", numpy.__version__)'"
step cuda_setup "$py" -c "
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
ok = torch.cuda.is_available()
t2 = time.perf_counter()
torch.zeros(1, device='cuda')
torch.cuda.synchronize()
t3 = time.perf_counter()
pinned = torch.empty(64 << 20, dtype=torch.uint8, pin_memory=True)
t4 = time.perf_counter()
print(f'fixed costs of the GPU path: import torch {t1 - t0:.2f} s, cuda.is_available() {t2 - t1:.2f} s, '
      f'CUDA context {t3 - t2:.2f} s, 64 MiB of pinned host memory {t4 - t3:.3f} s')
"
step pytest_verify "$py" -m pytest -q -rs -p no:cacheprovider tests/test_verify.py
step bench_verify "$py" scripts/bench_verify.py --workers 1,auto --repeat 5
tmp=$(mktemp -d)
"$py" -c "import sys; from pathlib import Path; sys.path.insert(0, 'scripts'); from bench_verify import make; make(Path(sys.argv[1]), 50257, 1600)" "$tmp/xl"
cat "$tmp/xl/model.safetensors" >/dev/null
run_cli() { # the command in a fresh child, its wall time and peak RSS (the child's alone: one child per wrapper)
    "$py" -c "
import resource, subprocess, sys, time
cmd = [sys.executable, '-m', 'ckptcount', *sys.argv[1:]]
t0 = time.perf_counter()
p = subprocess.run(cmd, capture_output=True, text=True)
wall = time.perf_counter() - t0
print('\$ ckptcount <gpt2-xl-sized dir>', *cmd[4:])
print(p.stdout + p.stderr, end='')
print(f'exit {p.returncode}; wall {wall:.2f} s; peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB')
" "$@"
}
step cli_auto run_cli "$tmp/xl" --verify-ties
step cli_cpu run_cli "$tmp/xl" --verify-ties --device cpu
rm -rf "$tmp"
exit "$status"
