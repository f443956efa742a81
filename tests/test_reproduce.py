import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "reproduce_synth.py")
ROWS = ("Pixel differencing", "Feature differencing", "Stage I", "Stage I + control", "Stage I + VAE round-trip",
        "Stage I + EMA self-training", "Stage I + edit-noise disentanglement", "Full Stage II",
        "Full Stage II minus disentanglement", "Full Stage II, flat prior at inference",
        "Full Stage II, prior with no misses at inference", "Full Stage II, prior with 50% misses at inference",
        "Full Stage II trained flat, flat prior at inference", "Full Stage II trained flat, simulated prior at inference",
        "Stage I trained flat", "Stage I, taps read as dinov2_blocks",
        "Stage I without the image logit and action embedding", "Stage I without the noise-floor cue",
        "Full Stage II without the noise-floor cue")
METHODS = {"pixel", "feature", "stage1", "stage2_control", "stage2_vae", "stage2_ema", "stage2_disentangle",
           "stage2_full", "stage2_no_disentangle", "full_at_flat", "full_at_miss0", "full_at_miss50", "full_flat",
           "full_flat_at_sim", "stage1_flat", "stage1_dinov2", "stage1_plain_head",
           "stage1_no_floor_cue", "stage2_full_no_floor_cue"}
RUNS = ("stage1", "stage1_flat", "stage1_dinov2", "stage1_plain_head", "stage2_control", "stage2_vae", "stage2_ema",
        "stage2_disentangle", "stage2_full", "stage2_no_disentangle", "stage2_full_flat", "stage1_no_floor_cue",
        "stage2_full_no_floor_cue")


def test_reproduction_smoke_run_writes_every_row(tmp_path):
    docs, work = tmp_path / "docs", tmp_path / "work"
    completed = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(work), "--docs", str(docs)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = (docs / "results.md").read_text()
    for row in ROWS:
        assert f"| {row}" in table, row
    assert "Groups where full Stage II is below the control by more than 0.02: " in table
    results = json.loads((docs / "results.json").read_text())
    assert set(results["methods"]) == METHODS
    heldout = results["scale"]["counts"]["heldout"]
    for name, method in results["methods"].items():
        groups = method["groups"]
        assert groups["all"]["images"] == heldout, name
        assert groups["perturbed"]["images"] + groups["unperturbed"]["images"] == groups["all"]["images"]
        for group in groups.values():
            assert 0.0 <= group["mean"]["f1"] <= 1.0 and 0.0 <= group["pooled"]["iou"] <= 1.0
    for run in RUNS:
        assert os.path.isfile(work / "runs" / run / "final" / "model.safetensors"), run
    assert {row["verdict"] for row in results["comparisons"]} <= {"helps", "hurts", "no significant effect"}
    assert {row["group"] for row in results["control_comparisons"]} >= {"unperturbed", "side_effect", "local"}
    # the simulated grounder's priors cover every split in one store (keys carry the split), the
    # error-rate stores the held-out pairs only; the dinov2_blocks run records its convention
    for split, count in results["scale"]["counts"].items():
        stored = [name for name in os.listdir(work / "priors" / "sim" / "maps") if name.startswith(f"{split}_")]
        assert len(stored) == count, split
    assert len(os.listdir(work / "priors" / "miss50" / "maps")) == heldout
    miss0 = json.loads((work / "priors" / "miss0" / "priors.json").read_text())["settings"]
    assert miss0["producer"] == "simulated_grounder" and miss0["miss_rate"] == 0.0
    config = json.loads((work / "runs" / "stage1_dinov2" / "final" / "config.json").read_text())
    assert config["tap_convention"] == "dinov2_blocks"
