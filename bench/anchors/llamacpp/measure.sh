#!/usr/bin/env bash
# llama.cpp one-process vs 3-way RPC layer split (local + 2 rpc-servers on loopback), f32, tg64, 1 thread each.
# Usage: ./measure.sh [rounds]   (default 3 rounds; each round = one-process -r 3 then split -r 3, per shape)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "${WORK:=$HERE/work}" && cd "$WORK"  # downloads, build and models go here (ignored by git)
ROUNDS=${1:-3}
SRC=llama_cpp_python-0.3.36/vendor/llama.cpp
export OMP_NUM_THREADS=1 GOMP_SPINCOUNT=0   # build has GGML_OPENMP=OFF anyway; these are belt and braces

# ---- 1. llama.cpp source (llama-cpp-python 0.3.36 sdist vendors ggml-org/llama.cpp@0c1e570) ----
if [ ! -d "$SRC" ]; then
  pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36 -d sdist
  tar xzf sdist/llama_cpp_python-0.3.36.tar.gz
fi
ln -sfn "$SRC" src
# ---- 2. build (only the two targets; in this version rpc-server's target is ggml-rpc-server) ----
if [ ! -x build/bin/llama-bench ] || [ ! -x build/bin/ggml-rpc-server ]; then
  cmake -S src -B build -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON -DGGML_NATIVE=ON -DGGML_OPENMP=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
  cmake --build build --target ggml-rpc-server llama-bench -j2
fi
# ---- 3. models: random HF checkpoints from tierflow, converted to GGUF f32 ----
[ -x venv/bin/python ] || { python -m venv venv --system-site-packages && venv/bin/pip install -q -e src/gguf-py; }
venv/bin/python "$HERE/make_models.py" hf-8x512 hf-24x1024
for s in 8x512 24x1024; do
  [ -f llama-$s-f32.gguf ] || venv/bin/python "$HERE/convert_wrap.py" hf-$s --outtype f32 --outfile llama-$s-f32.gguf
done
# ---- 4. rpc servers, one thread each, loopback ----
build/bin/ggml-rpc-server -t 1 -H 127.0.0.1 -p 50052 > rpc0.log 2>&1 & P0=$!
build/bin/ggml-rpc-server -t 1 -H 127.0.0.1 -p 50053 > rpc1.log 2>&1 & P1=$!
trap 'kill $P0 $P1 2>/dev/null || true' EXIT
sleep 1
RPC=127.0.0.1:50052,127.0.0.1:50053
# split: layers [0,L/3) local CPU; next third RPC0; last third + output head RPC1 (token embedding always local).
# ngl counts the output layer, offloaded layers are the last ngl of (L layers + output); -ts splits them over RPC0/RPC1.
#   8 layers : -ngl 6  -ts 1/1   -> CPU 0-2, RPC0 3-5, RPC1 6-7+head
#   24 layers: -ngl 17 -ts 15/17 -> CPU 0-7, RPC0 8-15, RPC1 16-23+head
declare -A SPLIT=([8x512]="-ngl 6 -ts 1/1" [24x1024]="-ngl 17 -ts 15/17")
OUT=results.csv; : > $OUT
for s in 8x512 24x1024; do
  M=llama-$s-f32.gguf
  for r in $(seq "$ROUNDS"); do
    echo "== $s round $r one-process"; build/bin/llama-bench -m $M -p 0 -n 64 -t 1 -r 3 -o csv 2>/dev/null \
      | tail -n +2 | sed "s/^/$s,one,$r,/" | tee -a $OUT > /dev/null
    echo "== $s round $r split";       build/bin/llama-bench -m $M -p 0 -n 64 -t 1 -r 3 -o csv --rpc $RPC ${SPLIT[$s]} 2>/dev/null \
      | tail -n +2 | sed "s/^/$s,split,$r,/" | tee -a $OUT > /dev/null
  done
done
build/bin/llama-bench -m llama-8x512-f32.gguf -p 0 -n 1 -r 1 -t 1 -o csv 2>/dev/null | head -1 > header.csv
venv/bin/python - <<'PY'
import csv, statistics as st
hdr = next(csv.reader(open("header.csv")))
rows = [r for r in csv.reader(open("results.csv"))]
res = {}
for r in rows:
    shape, mode, rnd, rest = r[0], r[1], r[2], r[3:]
    d = dict(zip(hdr, rest))
    res.setdefault(shape, {}).setdefault(mode, []).append(float(d["avg_ts"]))
    print(f"{shape:8s} {mode:5s} round {rnd}: {float(d['avg_ts']):8.2f} ± {float(d['stddev_ts']):.2f} t/s  "
          f"(backend={d.get('backends')}, ngl={d.get('n_gpu_layers')}, ts={d.get('tensor_split')}, fa={d.get('flash_attn')}, threads={d.get('n_threads')})")
for shape, m in res.items():
    one, spl = st.mean(m["one"]), st.mean(m["split"])
    print(f"{shape}: one-process {one:.2f} t/s (rounds {['%.1f'%x for x in m['one']]}), "
          f"split {spl:.2f} t/s (rounds {['%.1f'%x for x in m['split']]}), split/one = {spl/one:.3f}")
PY
