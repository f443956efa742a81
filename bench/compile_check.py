#!/usr/bin/env python3
"""The compile gate (issue 12): compiles every Triton kernel production runs, at production shapes,
for Hopper (sm_90a) and Ampere (sm_80) on a machine without a GPU, and fails on what makes them slow.

    python bench/compile_check.py [--cap 90 --cap 80] [--json OUT.json] [--jobs N] [--only TEXT]

What it compiles: every (op, variant) of `bench/shapes.py`'s VARIANTS (annotation at 32 and 64
pairs, training at its batch with the backward, calibration; the backbone's row ops and GEMM
epilogues), called through the public ops of `sigma_fast.kernels` on CPU tensors of the real
shapes, layouts and dtypes, with the ops' dispatch forced to Triton. A stand-in active driver
targets the chosen GPU; every launch compiles and stops (nothing runs, `torch.empty` is enough).
Each capability compiles in processes of its own (Triton caches kernels per device), its variants
split over `--jobs` processes (default: one per usable CPU, at most 8 per capability).

One row per compiled kernel: the variants that launch it, its constexprs, warps, stages, registers
and spill bytes (ptxas -v on the PTX), shared memory, and the instructions that show how it uses
the hardware: wgmma (Hopper's asynchronous warpgroup MMA), mma.sync (the older synchronous MMA),
TMA (cp.async.bulk.tensor). Every dot is classified from the final TTGIR (warpgroup dot, MMA v2
or FMA) with its tile M and operand type.

It exits 1 when any kernel
- spills registers (any capability);
- needs more shared memory than the capability has;
- on sm_90a, leaves a dot with bf16 / fp16 / fp8 operands off wgmma (MMA v2 = mma.sync, or FMA),
  unless EXEMPT below names the kernel with the reason it cannot use wgmma. A dot whose tile M is
  under 64 (one warpgroup's minimum) counts: the tile is a choice, so it needs an exemption too;
- or when a variant fails to compile.
Variants production never runs on a capability (MIN_CAPABILITY: FP8 below sm_89) are listed as
not compiled there, with the reason.
Needs triton 3.6-3.9 and torch; TRITON_INTERPRET is ignored.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# kernel name -> why its half-precision dots cannot use wgmma. Exempts from the wgmma rule only.
EXEMPT = {}

SHARED_MEMORY_LIMIT = {90: 232448, 80: 166912}  # bytes per block (227 KiB, 163 KiB)
# op -> (lowest capability, why): variants production never runs below it are not compiled there.
MIN_CAPABILITY = {
    "residual_layer_norm_fp8": (89, "e4m3 needs sm_89+; the backbone's FP8 mode requires it"),
    "quantize_fp8_rows": (89, "e4m3 needs sm_89+; the backbone's FP8 mode requires it"),
}
MAX_SHARDS = 8  # processes per capability: more only repeat imports (about 16 (op, mode) groups)
HALF_TYPES = ("bf16", "f16", "f8")  # TTGIR element types that wgmma takes (f16, bf16, f8E4M3FN, f8E5M2)
LAYOUT = re.compile(r"^(#[\w.]+) = #(?:ttg|triton_gpu)\.(\w+)<\{(?:versionMajor = (\d+))?", re.M)
DOT = re.compile(r"= (tt\.dot|ttng\.warp_group_dot) .*?: (?:tensor|!ttg\.memdesc)<(\d+)x(\d+)x(\w+)[,>]"
                 r".*?-> tensor<(\d+)x(\d+)x\w+, (#[\w.]+)>")


# ---- worker: runs in a subprocess per capability ----------------------------------------------

def install_fake_driver(capability, launched):
    """A stand-in active CUDA driver for `capability`; launches compile and stop. Every launch
    appends (name, constexprs, options, compiled kernel) to `launched` (also on cache hits)."""
    import torch
    import triton  # noqa: F401
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime import driver as runtime_driver
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    class FakeCudaDriver(DriverBase):
        @classmethod
        def is_active(cls):
            return True

        def __init__(self):
            self.get_current_device = lambda: 0
            self.get_current_stream = lambda *args: 0
            self.set_current_device = lambda *args: None

        def get_current_target(self):
            return GPUTarget("cuda", capability, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_device_interface(self):
            return torch.cuda

        def get_benchmarker(self):
            raise NotImplementedError("no GPU: nothing can be timed here")

        def map_python_to_cpp_type(self, ty):
            from triton.backends.nvidia.driver import ty_to_cpp
            return ty_to_cpp(ty)

    runtime_driver.set_active(FakeCudaDriver())
    compiled = {}  # id(kernel) -> (constexprs, options)
    original_compile = JITFunction._do_compile

    def recording_compile(self, key, signature, device, constexprs, options, attrs, warmup):
        kernel = original_compile(self, key, signature, device, constexprs, options, attrs, warmup)
        names = [p.name for p in self.params]
        cx = {names[p[0]] if len(p) == 1 else str(p): v for p, v in constexprs.items()}
        compiled[id(kernel)] = (cx, options)
        return kernel

    def compile_only(self, grid):
        def launch(*args, **kwargs):
            kernel = self.run(*args, grid=grid, warmup=True, **kwargs)
            cx, options = compiled[id(kernel)]
            launched.append((self.fn.__name__, cx, options, kernel))
            return kernel
        return launch

    def autotuner_compile_all(self, *args, grid, **kwargs):
        # Timing needs a GPU: compile every config instead (any of them may be chosen on the card).
        for config in self.configs:
            compile_only(self.fn, grid)(*args, **kwargs, **config.all_kwargs())

    JITFunction._do_compile = recording_compile
    JITFunction.__getitem__ = compile_only
    Autotuner.__getitem__ = lambda self, grid: (lambda *a, **kw: autotuner_compile_all(self, *a, grid=grid, **kw))


def force_triton_dispatch():
    """The ops send CPU tensors to their references: make every module of sigma_fast.kernels
    believe Triton runs here."""
    import sigma_fast.kernels  # noqa: F401
    from sigma_fast.kernels import _dispatch

    original = _dispatch.use_triton
    for name, module in list(sys.modules.items()):
        if name.startswith("sigma_fast") and getattr(module, "use_triton", None) is original:
            module.use_triton = lambda device: True


def run_variant(variant):
    """Calls the op as production does; the backward too where training differentiates."""
    import torch

    import shapes
    from sigma_fast import kernels

    args, kwargs = shapes.inputs(variant, torch.device("cpu"))
    op = getattr(kernels, variant.op)
    if not variant.backward:
        with torch.no_grad():
            op(*args, **kwargs)
        return
    outputs = op(*args, **kwargs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    leaves = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    torch.autograd.grad(outputs, leaves, [torch.empty_like(o) for o in outputs])


def ptxas_usage(ptx, capability):
    import triton

    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as handle:
        handle.write(ptx)
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    err = ""
    for name in ("ptxas", "ptxas-blackwell"):  # newer Triton emits PTX that only its newer ptxas reads
        path = os.path.join(bindir, name)
        if os.path.exists(path):
            err = subprocess.run([path, "-v", f"--gpu-name={arch}", handle.name, "-o", os.devnull],
                                 capture_output=True, text=True).stderr
            if "Used" in err:
                break
    os.unlink(handle.name)
    # The entry function's registers; spills summed over it and any non-inlined callee.
    regs = re.search(r"Compiling entry function[^\n]*\n(?:.*\n)*?.*Used (\d+) registers", err)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", err)
    return {"regs": int(regs.group(1)) if regs else None,
            "spill_st": sum(int(st) for st, _ in spills) if spills else None,
            "spill_ld": sum(int(ld) for _, ld in spills) if spills else None}


def classify_dots(ttgir):
    """[{"kind": wgmma | mma_v2 | fma, "m", "k", "type"}] for every dot of the final TTGIR."""
    versions = {alias: (kind, int(major) if major else None) for alias, kind, major in LAYOUT.findall(ttgir)}
    dots = []
    for op, m, k, element, _, _, layout in DOT.findall(ttgir):
        kind, major = versions.get(layout, ("?", None))
        if op == "ttng.warp_group_dot":
            found = "wgmma"
        elif kind == "nvidia_mma":
            found = f"mma_v{major}" if major != 3 else "wgmma"
        else:
            found = "fma"
        dots.append({"kind": found, "m": int(m), "k": int(k), "type": element})
    return dots


def describe(name, cx, options, kernel, capability):
    ptx = kernel.asm["ptx"]
    row = {"kernel": name, "capability": capability,
           "constexprs": {k: (v if isinstance(v, (int, float, bool)) else str(v)) for k, v in cx.items()},
           "warps": options.num_warps, "stages": options.num_stages, "maxnreg": getattr(options, "maxnreg", None),
           "shared_bytes": kernel.metadata.shared,
           "wgmma": ptx.count("wgmma.mma_async"), "mma_sync": len(re.findall(r"\bmma\.sync", ptx)),
           "tma": ptx.count("cp.async.bulk.tensor"), "dots": classify_dots(kernel.asm["ttgir"]),
           "ptx_sha": hashlib.sha1(ptx.encode()).hexdigest()[:12]}
    row.update(ptxas_usage(ptx, capability))
    return row


def worker(capability, out_path, only, shard, shards):
    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, HERE)
    launched = []
    install_fake_driver(capability, launched)
    force_triton_dispatch()
    import shapes

    rows, failures, skipped, by_kernel = [], [], [], {}
    groups = list(dict.fromkeys((v.op, v.mode) for v in shapes.VARIANTS))
    for variant in shapes.VARIANTS:
        case = variant_name(variant)
        if groups.index((variant.op, variant.mode)) % shards != shard or (only and only not in case):
            continue
        lowest, why = MIN_CAPABILITY.get(variant.op, (0, ""))
        if capability < lowest:
            skipped.append({"case": case, "reason": why})
            continue
        start = len(launched)
        try:
            run_variant(variant)
        except Exception as exc:  # a variant that cannot compile is a finding, not a crash of the gate
            lines = [line for line in str(exc).splitlines() if line.strip()] or [""]
            failures.append({"case": case, "error": f"{type(exc).__name__}: {lines[-1].strip()[:300]}"})
            continue
        for name, cx, options, kernel in launched[start:]:
            if id(kernel) not in by_kernel:
                by_kernel[id(kernel)] = describe(name, cx, options, kernel, capability)
                by_kernel[id(kernel)]["cases"] = []
                rows.append(by_kernel[id(kernel)])
            if case not in by_kernel[id(kernel)]["cases"]:
                by_kernel[id(kernel)]["cases"].append(case)
    with open(out_path, "w") as handle:
        json.dump({"rows": rows, "failures": failures, "skipped": skipped}, handle)


def variant_name(variant):
    return f"{variant.op}.{variant.mode}.{variant.pairs}{'.bwd' if variant.backward else ''}"


# ---- driver: judges and prints ------------------------------------------------------------------

def problems(row):
    """Why this kernel fails the gate (empty list: it passes)."""
    found = []
    if row["regs"] is None:
        found.append("ptxas gave no register report")
    if row["spill_st"] or row["spill_ld"]:
        found.append(f"spills {row['spill_st']}/{row['spill_ld']} bytes")
    limit = SHARED_MEMORY_LIMIT.get(row["capability"])
    if limit and row["shared_bytes"] > limit:
        found.append(f"shared memory {row['shared_bytes']} > {limit}")
    if row["capability"] >= 90 and row["kernel"] not in EXEMPT:
        off = [d for d in row["dots"] if d["kind"] != "wgmma" and d["type"].startswith(HALF_TYPES)]
        for dot in off:
            small = f", tile M {dot['m']} < 64" if dot["m"] < 64 else ""
            found.append(f"{dot['type']} dot {dot['m']}x{dot['k']} on {dot['kind']}{small}")
        if row["mma_sync"] and not [d for d in row["dots"] if d["kind"] != "wgmma"]:
            found.append("mma.sync in the PTX but no such dot recognised in the TTGIR (format changed?)")
    return found


def constexpr_text(cx):
    return ",".join(f"{k}={v}" for k, v in cx.items())


def print_table(rows, failures):
    header = (f"{'sm':>3} {'kernel':34} {'w':>2} {'s':>2} {'regs':>4} {'spill':>7} {'smem':>6} {'wgmma':>5} "
              f"{'mma.sync':>8} {'TMA':>3}  {'status':6} variants / constexprs / problems")
    print(header)
    for row in rows:
        bad = problems(row)
        spill = f"{row['spill_st']}/{row['spill_ld']}"
        print(f"{row['capability']:>3} {row['kernel'][:34]:34} {row['warps']:>2} {row['stages']:>2} {row['regs']!s:>4} "
              f"{spill:>7} {row['shared_bytes']:>6} {row['wgmma']:>5} {row['mma_sync']:>8} {row['tma']:>3}  "
              f"{'FAIL' if bad else 'ok':6} {' '.join(row['cases'])}")
        maxnreg = f" maxnreg={row['maxnreg']}" if row.get("maxnreg") else ""
        print(f"{'':>64}{constexpr_text(row['constexprs'])}{maxnreg}")
        for problem in bad:
            print(f"{'':>64}-> {problem}")
    for failure in failures:
        print(f"{failure['capability']:>3} {failure['case']}: FAILED TO COMPILE {failure['error']}")


def run_workers(capabilities, jobs, only):
    """Compiles in `jobs` processes at once: each capability's variants split into shards by
    (op, mode), so that the pair counts of one variant, which share kernels, stay together."""
    shards = min(MAX_SHARDS, max(1, -(-jobs // len(capabilities))))
    tasks = [(cap, shard) for cap in capabilities for shard in range(shards)]
    results, running = [], []
    with tempfile.TemporaryDirectory() as folder:
        while tasks or running:
            while tasks and len(running) < jobs:
                cap, shard = tasks.pop(0)
                out = os.path.join(folder, f"{cap}-{shard}.json")
                command = [sys.executable, os.path.abspath(__file__), "--worker", str(cap), "--worker-out", out,
                           "--shard", f"{shard}/{shards}", *(["--only", only] if only else [])]
                running.append((cap, out, subprocess.Popen(command)))
            cap, out, process = running.pop(0)
            if process.wait() != 0 or not os.path.exists(out):
                results.append((cap, {"rows": [], "skipped": [],
                                      "failures": [{"case": "(worker)", "error": f"exit {process.returncode}"}]}))
                continue
            with open(out) as handle:
                results.append((cap, json.load(handle)))
    rows, failures, skipped, seen = [], [], [], {}
    for cap, result in results:
        failures += [dict(failure, capability=cap) for failure in result["failures"]]
        skipped += [dict(skip, capability=cap) for skip in result["skipped"]]
        for row in result["rows"]:
            key = (row["capability"], row["kernel"], row["ptx_sha"])
            if key in seen:  # the same kernel compiled in two shards: one row, all its variants
                seen[key]["cases"] += [case for case in row["cases"] if case not in seen[key]["cases"]]
                continue
            seen[key] = row
            rows.append(row)
    return rows, failures, skipped


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, action="append", help="compute capability (repeatable; default 90 and 80)")
    parser.add_argument("--json", help="write every row (and each failing variant) here as JSON")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="compiling processes at once (default: the CPUs this process may use)")
    parser.add_argument("--only", help="compile only the variants whose name (op.mode.pairs[.bwd]) contains this")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.worker_out, args.only, *map(int, args.shard.split("/")))
        return
    started = time.time()
    capabilities = args.cap or [90, 80]
    rows, failures, skipped = run_workers(capabilities, max(1, args.jobs), args.only)
    print_table(rows, failures)
    for skip in skipped:
        print(f"{skip['capability']:>3} {skip['case']}: not compiled ({skip['reason']})")
    failing = [row for row in rows if problems(row)]
    spilling = [row for row in rows if row["spill_st"] or row["spill_ld"]]
    targets = ", ".join(f"sm_{cap}" for cap in capabilities)
    print(f"{len(rows)} kernels compiled for {targets} in {time.time() - started:.0f} s: "
          f"{len(failing)} fail ({len(spilling)} spill), {len(failures)} variants failed to compile")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": [dict(row, problems=problems(row)) for row in rows], "failures": failures,
                       "skipped": skipped, "exempt": EXEMPT}, handle, indent=1)
    sys.exit(1 if failing or failures else 0)


if __name__ == "__main__":
    main()
