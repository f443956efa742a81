"""Prints the short table that ends bench/gpu_check.sh from a pytest-benchmark JSON file.

Each benchmark may record `extra_info` with `pairs` (items per call), `baseline` (the name of the
benchmark it is compared with) and `floor_s` (its memory or compute floor in seconds).
"""
import json
import sys


def main(path, card):
    with open(path) as handle:
        benchmarks = json.load(handle)["benchmarks"]
    medians = {bench["name"]: bench["stats"]["median"] for bench in benchmarks}
    print(f"\n{card}")
    print(f"{'benchmark':60s} {'median ms':>10s} {'pairs/s':>10s} {'vs baseline':>12s} {'floor share':>11s}")
    for bench in benchmarks:
        info, median = bench.get("extra_info", {}), bench["stats"]["median"]
        rate = f"{info['pairs'] / median:10.0f}" if "pairs" in info else f"{'':10s}"
        base = info.get("baseline")
        ratio = f"{medians[base] / median:11.2f}x" if base in medians else f"{'':12s}"
        floor = f"{info['floor_s'] / median:11.2f}" if "floor_s" in info else ""
        print(f"{bench['name'][:60]:60s} {median * 1e3:10.3f} {rate} {ratio} {floor}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "unknown card")
