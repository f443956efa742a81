import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "reproduce_synth.py")
ROWS = ("Pixel differencing", "Feature differencing", "Stage I", "Stage I + control", "Stage I + VAE round-trip",
        "Stage I + EMA self-training", "Stage I + edit-noise disentanglement", "Full Stage II")


def test_reproduction_smoke_run_writes_every_row(tmp_path):
    docs = tmp_path / "docs"
    completed = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path / "work"), "--docs", str(docs)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = (docs / "results.md").read_text()
    for row in ROWS:
        assert f"| {row}" in table, row
    results = json.loads((docs / "results.json").read_text())
    assert set(results["methods"]) == {"pixel", "feature", "stage1", "stage2_control", "stage2_vae", "stage2_ema",
                                       "stage2_disentangle", "stage2_full"}
    for name, method in results["methods"].items():
        groups = method["groups"]
        assert groups["all"]["images"] == results["scale"]["counts"]["heldout"], name
        assert groups["perturbed"]["images"] + groups["unperturbed"]["images"] == groups["all"]["images"]
        for group in groups.values():
            assert 0.0 <= group["mean"]["f1"] <= 1.0 and 0.0 <= group["pooled"]["iou"] <= 1.0
    for trained in ("stage2_vae", "stage2_ema", "stage2_disentangle", "stage2_full"):
        assert os.path.isfile(tmp_path / "work" / "runs" / trained / "final" / "model.safetensors")
    assert {row["verdict"] for row in results["comparisons"]} <= {"helps", "hurts", "no significant effect"}
