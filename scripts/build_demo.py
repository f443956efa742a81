"""Build the demo embedded in the package, deterministically:

- `sigma_fast/assets/demo_model/`: a SIGMA head trained by `sigma_fast.train` with the
  reproduction's recipe (scripts/reproduce_synth.py: synthetic data, the tiny random encoders,
  Stage I, then the Stage II variant that scored best on its held-out set), with the encoders
  copied inside as `backbone/` and `text_encoder/` and referenced by those relative paths;
- `sigma_fast/assets/demo_pairs/`: a handful of synthetic pairs from a seed neither training nor
  the held-out set uses, covering the five actions, perturbed and not, and a side effect, with
  `pairs.jsonl` (relative paths).

    python scripts/build_demo.py            # about as long as the reproduction's training
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile

from PIL import Image

import reproduce_synth as recipe

ASSETS = os.path.join(recipe.REPO, "sigma_fast", "assets")
RESULTS = os.path.join(recipe.REPO, "docs", "results.json")
DEMO_SEED = 5000  # neither a training nor the held-out seed of the reproduction
# (action, perturbed, side effect): every action, both domains, one unintended change
DEMO_PAIRS = (("add", False, False), ("remove", True, False), ("replace", False, False),
              ("attribute_change", True, False), ("global", True, False), ("add", True, True),
              ("replace", True, False), ("attribute_change", False, False))
MAX_ATTEMPTS = 50  # seeds tried for a pair until it has the wanted side effect


def best_variant(results_path):
    """The trained method with the highest mean F1 on all held-out pairs of the reproduction."""
    with open(results_path) as handle:
        methods = json.load(handle)["methods"]
    trained = [name for name in methods if name == "stage1" or name in recipe.VARIANTS]
    return max(trained, key=lambda name: methods[name]["groups"]["all"]["mean"]["f1"])


def train_demo_model(work, variant):
    """-> (checkpoint folder, held-out metrics, autoencoder folder or None)."""
    scale = recipe.FULL
    first = recipe.run_jobs({"stage1": (recipe.stage_one_job, (work, scale, None)),
                             "target": (recipe.target_domain_job, (work, scale, None))}, 2)
    if variant == "stage1":
        metrics = recipe.evaluate_method(work, scale, "stage1")
    else:
        metrics = recipe.stage_two_job(work, scale, variant, first["target"]["autoencoder"])["metrics"]
    return os.path.join(work, "runs", variant, "final"), metrics["groups"]


def package_model(checkpoint, encoders, destination, provenance):
    """Checkpoint + its encoders -> a self-contained, relocatable checkpoint folder."""
    from sigma_fast.config import SigmaConfig
    from sigma_fast.model.sigma import WEIGHTS_NAME

    shutil.rmtree(destination, ignore_errors=True)
    for name in ("backbone", "text_encoder"):
        shutil.copytree(os.path.join(encoders, name), os.path.join(destination, name))
    config = dataclasses.replace(SigmaConfig.load(checkpoint), backbone="backbone", text_encoder="text_encoder",
                                 extra=provenance)
    config.save(destination)
    shutil.copyfile(os.path.join(checkpoint, WEIGHTS_NAME), os.path.join(destination, WEIGHTS_NAME))


def demo_pair(index, action, perturbed, side_effect):
    from sigma_fast.data.synth import SynthConfig, generate_pair, sample_seed

    config = SynthConfig(image_size=recipe.FULL.image_size, action_weights={action: 1.0},
                         perturb_prob=float(perturbed), side_effect_prob=float(side_effect))
    for attempt in range(MAX_ATTEMPTS):
        pair = generate_pair(sample_seed(DEMO_SEED, index * MAX_ATTEMPTS + attempt), config)
        if pair.side_effect == side_effect:
            return pair
    raise RuntimeError(f"no {action} pair with side_effect={side_effect} in {MAX_ATTEMPTS} seeds")


def write_demo_pairs(destination):
    """The sample pairs as PNGs (a perturbed edited image is stored losslessly as decoded) and
    `pairs.jsonl` with paths relative to it."""
    shutil.rmtree(destination, ignore_errors=True)
    for folder in ("original", "edited", "mask"):
        os.makedirs(os.path.join(destination, folder))
    rows = []
    for index, (action, perturbed, side_effect) in enumerate(DEMO_PAIRS):
        pair = demo_pair(index, action, perturbed, side_effect)
        key = f"demo_{index + 1}_{action}"
        paths = {name: f"{name}/{key}.png" for name in ("original", "edited", "mask")}
        for name, path in paths.items():
            Image.fromarray(getattr(pair, name)).save(os.path.join(destination, path))
        rows.append({"key": key, **paths, "instruction": pair.instruction, "action": pair.action,
                     "perturbed": pair.perturbed, "side_effect": pair.side_effect})
    with open(os.path.join(destination, "pairs.jsonl"), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "sigma_fast_build_demo"),
                        help="work folder for data and runs (emptied first)")
    parser.add_argument("--assets", default=ASSETS, help="where demo_model/ and demo_pairs/ go")
    parser.add_argument("--variant", default=None,
                        help=f"stage1 or one of {sorted(recipe.VARIANTS)} (default: the best in {RESULTS})")
    args = parser.parse_args(argv)
    variant = args.variant or best_variant(RESULTS)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    checkpoint, heldout = train_demo_model(args.work, variant)
    scale = recipe.FULL
    provenance = {"built_by": "scripts/build_demo.py", "recipe": variant, "image_size": scale.image_size,
                  "stage1_steps": scale.stage1_steps, "stage2_steps": 0 if variant == "stage1" else scale.stage2_steps,
                  "data": "sigma_fast.data.synth", "seeds": recipe.SEEDS,
                  "heldout_mean_f1": {group: round(heldout[group]["mean"]["f1"], 4)
                                      for group in ("all", "perturbed", "unperturbed") if group in heldout},
                  "note": "a toy: tiny random encoders, a head trained on synthetic edits; not for real photographs"}
    package_model(checkpoint, os.path.join(args.work, "encoders"), os.path.join(args.assets, "demo_model"), provenance)
    rows = write_demo_pairs(os.path.join(args.assets, "demo_pairs"))
    print(f"demo model ({variant}) and {len(rows)} pairs written under {args.assets}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
