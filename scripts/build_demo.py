"""Build the demo embedded in the package, deterministically:

- `sigma_fast/assets/demo_model/`: the SIGMA head that `scripts/reproduce_synth.py` trained with
  the variant that scored best on its held-out set (synthetic data, the tiny random encoders,
  Stage I, then Stage II), taken from that run's work folder with the encoders copied inside as
  `backbone/` and `text_encoder/` and referenced by those relative paths;
- `sigma_fast/assets/demo_pairs/`: a handful of synthetic pairs from a seed neither training nor
  the held-out set uses, covering the five actions, perturbed and not, and a side effect, with
  `pairs.jsonl` (relative paths).

    python scripts/reproduce_synth.py       # trains every variant, writes docs/results.*
    python scripts/build_demo.py            # packages the best one from the same work folder
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


def best_variant(methods):
    """The trained method with the highest mean F1 on all held-out pairs of the reproduction
    (`methods`: its results.json's "methods")."""
    trained = [name for name in methods if name == "stage1" or name in recipe.VARIANTS]
    return max(trained, key=lambda name: methods[name]["groups"]["all"]["mean"]["f1"])


def trained_checkpoint(work, variant):
    """-> the reproduction's checkpoint folder of `variant` (a FileNotFoundError when it has not run)."""
    checkpoint = os.path.join(work, "runs", variant, "final")
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"no {checkpoint}: run scripts/reproduce_synth.py --out {work} first")
    return checkpoint


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
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "sigma_fast_reproduce_synth"),
                        help="the work folder of a finished scripts/reproduce_synth.py run (its --out)")
    parser.add_argument("--results", default=RESULTS, help="that run's results.json")
    parser.add_argument("--assets", default=ASSETS, help="where demo_model/ and demo_pairs/ go")
    parser.add_argument("--variant", default=None,
                        help=f"stage1 or one of {sorted(recipe.VARIANTS)} (default: the best in --results)")
    args = parser.parse_args(argv)
    with open(args.results) as handle:
        methods = json.load(handle)["methods"]
    variant = args.variant or best_variant(methods)
    checkpoint = trained_checkpoint(args.work, variant)
    heldout = methods[variant]["groups"]
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
