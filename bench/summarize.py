"""Prints the short table that ends bench/gpu_check.sh from pytest-benchmark JSON files.

    python bench/summarize.py [--card CARD] [--write RUN.json] BENCH.json [BENCH.json ...]

Several files (gpu_check.sh's core/training and kernel phases) are read as one run; `--write`
saves them merged (the first file's machine info, every benchmark) as the run's JSON.

Per benchmark: median ms, pairs/s, ratios to baselines and share of the floor, from `extra_info`:
- rows of bench_core.py / bench_train.py: `median_ms` (CUDA events), `pairs_per_s`,
  `ratio_to_<baseline>` (each baseline measured earlier in the same run), `share_of_floor`;
- rows of the kernel benchmarks (bench_kernels.py, bench_rowwise.py, ...): `median_ms` (CUDA
  events over graph replays), `pairs_per_s`, `floor_s` / `share_of_floor`, `ratio_to_<baseline>`;
- older runs: `pairs` (items per call), `baseline` (the benchmark compared with) and `floor_s`,
  with pytest-benchmark's median.
The card is the JSON's `machine_info["cuda"]["card"]` (bench/conftest.py), else CARD.
"""
import argparse
import json


def ratios(info, medians, median):
    named = {key[len("ratio_to_"):]: value for key, value in info.items() if key.startswith("ratio_to_")}
    if not named and info.get("baseline") in medians:
        named[info["baseline"]] = medians[info["baseline"]] / median
    return ", ".join(f"{value:.2f}x {name}" for name, value in named.items())


def row(bench, medians):
    """-> (name, median ms, pairs/s or None, ratios text, share of floor or None)."""
    info, median = bench.get("extra_info", {}), bench["stats"]["median"]
    median_ms = info.get("median_ms", median * 1e3)
    pairs_per_s = info.get("pairs_per_s", info["pairs"] / median if "pairs" in info else None)
    share = info.get("share_of_floor", info["floor_s"] / median if "floor_s" in info else None)
    return bench["name"], median_ms, pairs_per_s, ratios(info, medians, median), share


def merge(paths):
    """One run from several pytest-benchmark JSON files: the first's machine info, all benchmarks."""
    runs = []
    for path in paths:
        with open(path) as handle:
            runs.append(json.load(handle))
    merged = dict(runs[0])
    merged["benchmarks"] = [bench for run in runs for bench in run["benchmarks"]]
    return merged


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="pytest-benchmark JSON files of one run")
    parser.add_argument("--card", help="the card's name when the JSON has none")
    parser.add_argument("--write", help="save the merged run JSON here")
    args = parser.parse_args()
    run = merge(args.paths)
    if args.write:
        with open(args.write, "w") as handle:
            json.dump(run, handle, indent=1)
    benchmarks = run["benchmarks"]
    card = run.get("machine_info", {}).get("cuda", {}).get("card") or args.card or "unknown card"
    medians = {bench["name"]: bench["stats"]["median"] for bench in benchmarks}
    print(f"\n{card}")
    print(f"{'benchmark':50s} {'median ms':>10s} {'pairs/s':>10s} {'floor share':>11s}  ratios")
    for name, median_ms, pairs_per_s, ratio_text, share in (row(bench, medians) for bench in benchmarks):
        rate = f"{pairs_per_s:10.0f}" if pairs_per_s is not None else f"{'':10s}"
        floor = f"{share:11.2f}" if share is not None else f"{'':11s}"
        print(f"{name[:50]:50s} {median_ms:10.3f} {rate} {floor}  {ratio_text}")


if __name__ == "__main__":
    main()
