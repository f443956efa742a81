#!/usr/bin/env bash
# CI: prove that sigma_fast._C compiles and links as a CUDA extension, on a machine without a GPU.
# A throwaway venv gets the CUDA build of torch; the extension is built with nvcc for sm_90a into a
# temp dir (the working tree's own build is left alone) with ptxas reporting each kernel's registers
# and spills (any spill fails the build), then checked for its CUDA code and imported.
# Nothing runs on a device.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

command -v nvcc > /dev/null || { echo "cuda_build: nvcc not found on PATH"; exit 1; }
# The toolkit root: nvcc may be a wrapper script, so ask nvcc itself where it lives.
CUDA_HOME="${CUDA_HOME:-$(nvcc -dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=\(.*\)\/bin\/\.\.$/\1/p')}"
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "cuda_build: no CUDA toolkit at CUDA_HOME='$CUDA_HOME'"; exit 1; }
export CUDA_HOME

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 -m venv "$WORK/venv"
# shellcheck disable=SC1091
. "$WORK/venv/bin/activate"
python -m pip install -q --upgrade pip
# cuobjdump is not part of every toolkit install; this wheel ships it (0.4 MB).
python -m pip install -q torch==2.14.1 setuptools wheel pybind11 ninja nvidia-cuda-cuobjdump==13.4.92
SITE="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CUOBJDUMP="$(command -v cuobjdump || echo "$SITE/nvidia/cu13/bin/cuobjdump")"
python -c "import torch; assert torch.version.cuda, 'torch==2.14.1 is not a CUDA build'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
# setup.py adds site-packages/nvidia/cu*/include (the CUDA headers of pip's torch) to the include dirs.

export TORCH_CUDA_ARCH_LIST=9.0a SIGMA_FAST_CUDA=1 SIGMA_FAST_PTXAS_VERBOSE=1
python setup.py -q build_ext --build-temp "$WORK/build" --build-lib "$WORK/lib" 2>&1 | tee "$WORK/build.log"
SO="$(ls "$WORK"/lib/sigma_fast/_C*.so)"

# ptxas (-Xptxas -v) per kernel: print its registers, fail on any spill.
python - "$WORK/build.log" <<'EOF'
import re
import shutil
import subprocess
import sys

kernels, name = {}, None
for line in open(sys.argv[1]):
    if match := re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line):
        name = (match[1], match[2])
    elif name and (match := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
        kernels.setdefault(name, {})["spills"] = (int(match[1]), int(match[2]))
    elif name and (match := re.search(r"Used (\d+) registers.*", line)):
        kernels.setdefault(name, {})["used"] = match[0]
if not kernels:
    sys.exit("cuda_build: no ptxas report in the build log (was -Xptxas -v passed?)")
symbols = [symbol for symbol, _ in kernels]
if shutil.which("c++filt"):
    symbols = subprocess.run(["c++filt"], input="\n".join(symbols), text=True, capture_output=True,
                             check=True).stdout.splitlines()
spilled = []
for symbol, ((_, arch), report) in zip(symbols, kernels.items()):
    stores, loads = report.get("spills", (0, 0))
    print(f"ptxas {arch}: {symbol}: {report.get('used', '?')}; spill stores {stores} B, loads {loads} B")
    if stores or loads:
        spilled.append(symbol)
if spilled:
    sys.exit("cuda_build: ptxas spills registers in " + "; ".join(spilled))
print(f"ptxas: {len(kernels)} kernels, no spills")
EOF

# The CUDA kernels are in the library, as sm_90a machine code, ...
# (Listings go to files first: `grep -q` on a pipe would end the writer early, which pipefail
# reports as a failure.)
"$CUOBJDUMP" --list-elf "$SO" > "$WORK/elf.txt"
"$CUOBJDUMP" --dump-elf-symbols "$SO" > "$WORK/device_symbols.txt"
nm -C "$SO" > "$WORK/host_symbols.txt"
readelf -d "$SO" > "$WORK/dynamic.txt"
cat "$WORK/elf.txt"
grep -q "sm_90a" "$WORK/elf.txt" || { echo "cuda_build: no sm_90a code in $SO"; exit 1; }
for kernel in preprocess_kernel postprocess_kernel composite_kernel; do
  grep -q "$kernel" "$WORK/device_symbols.txt" || { echo "cuda_build: kernel $kernel missing"; exit 1; }
done
# ... their host launchers are linked in, against torch's CUDA libraries, ...
for launcher in preprocess_cuda postprocess_cuda composite_cuda; do
  grep -q "sigma_fast::$launcher" "$WORK/host_symbols.txt" || { echo "cuda_build: sigma_fast::$launcher missing"; exit 1; }
done
grep -q "libc10_cuda.so" "$WORK/dynamic.txt" || { echo "cuda_build: $SO does not link libc10_cuda"; exit 1; }
# ... and the module loads (no GPU needed to import it) and says it has CUDA.
python - "$SO" <<'EOF'
import importlib.util
import sys

import torch  # noqa: F401  (loads the libraries the extension links against)

spec = importlib.util.spec_from_file_location("sigma_fast._C", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert module.with_cuda is True, "built without CUDA"
print("sigma_fast._C imports, with_cuda =", module.with_cuda)
EOF

echo "CUDA build wall time: $(( $(date +%s) - start )) s"
