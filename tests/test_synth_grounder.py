import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sigma_fast.data.manifest import read_manifest
from sigma_fast.data.synth import SynthConfig, generate_dataset, generate_pair
from sigma_fast.data.synth_grounder import SimulatedGrounder, write_priors
from sigma_fast.priors import PriorStore
from sigma_fast.grounding.edit import EditTuple
from sigma_fast.grounding.prior import grounding_jobs, prior_from_masks

GRID = 8
CONFIG = SynthConfig(image_size=64, perturb_prob=0.0, autoencoder=False, use_photos=False)
EXACT = dict(miss_rate=0.0, jitter=0.0, distractor_rate=0.0, partial_rate=0.0)


def _row(index, pair):
    return {"key": f"synth_{index:07d}", "action": pair.action, "source": pair.source, "target": pair.target,
            "meta": pair.meta}


@pytest.fixture(scope="module")
def pairs():
    return [generate_pair(seed, CONFIG) for seed in range(300)]


@pytest.fixture(scope="module")
def rows(pairs):
    return [_row(i, pair) for i, pair in enumerate(pairs)]


def _jobs_of(boxes):
    return {(b["image"], b["concept"]) for b in boxes}


def test_shapes_and_global_pairs_are_flat(rows):
    result = SimulatedGrounder(seed=3).priors(rows[:40], GRID)
    assert result.prior.shape == (40, GRID, GRID) and result.prior.dtype == torch.float32
    assert result.flat.shape == (40,) and result.flat.dtype == torch.bool
    assert len(result.boxes) == 40 and 0 <= result.prior.min() and result.prior.max() <= 1
    for row, prior, flat, boxes in zip(rows, result.prior, result.flat, result.boxes):
        json.dumps(boxes)
        if row["action"] == "global":
            assert flat and not boxes and bool((prior == 1).all())


def test_jobs_match_the_real_grounder(rows):
    # every box belongs to an (image, concept) job of the real grounder, and with no errors all jobs are found
    result = SimulatedGrounder(**EXACT).priors(rows, GRID)
    for row, boxes in zip(rows, result.boxes):
        expected = grounding_jobs(EditTuple(row["action"], row["source"], row["target"]))
        assert [(b["image"], b["concept"]) for b in boxes] == expected
        assert all(b["hit"] == "target" and not b["partial"] for b in boxes)


def test_deterministic_per_seed_and_key(rows):
    grounder = SimulatedGrounder(seed=5)
    whole = grounder.priors(rows[:30], GRID)
    again = SimulatedGrounder(seed=5).priors(rows[:30][::-1], GRID)  # other order, other batch
    torch.testing.assert_close(whole.prior, again.prior.flip(0), rtol=0, atol=0)
    assert whole.boxes == again.boxes[::-1]
    other = SimulatedGrounder(seed=6).priors(rows[:30], GRID)
    assert whole.boxes != other.boxes


def test_miss_rate_and_flat_on_a_miss(rows):
    local = [row for row in rows if row["action"] != "global"]
    result = SimulatedGrounder(miss_rate=0.3, distractor_rate=0.0, seed=1).priors(local, GRID)
    concepts = missed = 0
    for row, flat, prior, boxes in zip(local, result.flat, result.prior, result.boxes):
        names = {c for _, c in grounding_jobs(EditTuple(row["action"], row["source"], row["target"]))}
        found = {b["concept"] for b in boxes}
        concepts, missed = concepts + len(names), missed + len(names - found)
        if not found:  # every concept missed, nothing else hit: the flat prior
            assert flat and bool((prior == 1).all())
        else:
            assert not flat
    assert concepts > 300 and abs(missed / concepts - 0.3) < 0.07
    everything_missed = SimulatedGrounder(miss_rate=1.0, distractor_rate=0.0).priors(local, GRID)
    assert bool(everything_missed.flat.all())


def _lookalike_jobs(row):
    """(image, concept) jobs whose image holds another object of the same shape or named colour."""
    meta, jobs = row["meta"], []
    for image, concept in grounding_jobs(EditTuple(row["action"], row["source"], row["target"])):
        named = meta["new"] if row["action"] == "replace" and image == "edited" else meta["object"]
        others = [o for o in meta["objects"] if o["center"] != meta["object"]["center"]]
        if any(o["shape"] == named["shape"] or (o["colour"] == named["colour"] and named["colour"] in concept.split())
               for o in others):
            jobs.append((image, concept))
    return jobs


def test_distractor_rate_instead_of_or_with(rows):
    result = SimulatedGrounder(miss_rate=0.3, distractor_rate=0.4, seed=2).priors(rows, GRID)
    eligible = hit = instead = 0
    for row, boxes in zip(rows, result.boxes):
        jobs = _lookalike_jobs(row)
        eligible += len(jobs)
        for job in jobs:
            kinds = [b["hit"] for b in boxes if (b["image"], b["concept"]) == job]
            hit += "distractor" in kinds
            instead += kinds == ["distractor"]
        assert all((b["image"], b["concept"]) in jobs for b in boxes if b["hit"] == "distractor")
    assert eligible > 60 and abs(hit / eligible - 0.4) < 0.15
    assert 0 < instead < hit  # with a miss the look-alike comes instead of the object


def test_partial_rate_and_partial_masks_cover_less(rows):
    local = [row for row in rows if row["action"] != "global"]
    result = SimulatedGrounder(partial_rate=0.25, seed=4).priors(local, GRID)
    targets = [b for boxes in result.boxes for b in boxes if b["hit"] == "target"]
    share = sum(b["partial"] for b in targets) / len(targets)
    assert len(targets) > 300 and abs(share - 0.25) < 0.07
    whole = SimulatedGrounder(**EXACT).priors(local, GRID).prior
    part = SimulatedGrounder(**{**EXACT, "partial_rate": 1.0}).priors(local, GRID).prior
    assert bool((part <= whole + 1e-6).all()) and float(part.sum()) < 0.95 * float(whole.sum())


def test_jitter_scales_with_box_size(rows):
    local = [row for row in rows if row["action"] != "global"]
    exact = SimulatedGrounder(**EXACT).priors(local, GRID).boxes
    # the same draws with jitter on: only the boxes move
    moved = SimulatedGrounder(**{**EXACT, "jitter": 0.1}).priors(local, GRID).boxes
    offsets = []
    for a_boxes, b_boxes in zip(exact, moved):
        for a, b in zip(a_boxes, b_boxes):
            (x0, y0, x1, y1), size = a["box"], 64
            if min(x0, y0) > 8 and max(x1, y1) < size - 8:  # clear of the border's clipping
                offsets.extend(np.subtract(b["box"], a["box"]) / [x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    assert len(offsets) > 400 and abs(np.std(offsets) - 0.1) < 0.02 and abs(np.mean(offsets)) < 0.02


def test_never_the_ground_truth_mask(pairs, rows):
    result = SimulatedGrounder(seed=7).priors(rows, GRID)
    exact = SimulatedGrounder(**EXACT).priors(rows, GRID).prior
    compared = 0
    for pair, row, prior, flat, close in zip(pairs, rows, result.prior, result.flat, exact):
        if flat:
            continue
        gt = torch.from_numpy(pair.mask > 0)
        gt_prior = prior_from_masks([gt], GRID)
        gt_cells = F.interpolate(gt[None, None].float(), size=(GRID, GRID), mode="area")[0, 0]
        assert not torch.equal(prior, gt_prior) and not torch.equal(prior, gt_cells)
        if row["action"] in ("add", "attribute_change") and not pair.side_effect:
            # without errors it still finds the edited object (its outline, not its edit mask)
            assert not torch.equal(close, gt_prior) and float((close - gt_prior).abs().mean()) < 0.06
            compared += 1
    assert compared > 50


def test_write_priors_for_a_manifest(tmp_path):
    manifest = generate_dataset(str(tmp_path / "data"), count=8, seed=11, config=CONFIG, progress=False)
    grounder = SimulatedGrounder(seed=2)
    store = write_priors(manifest, str(tmp_path / "priors"), GRID, grounder, batch_size=3)
    records, _ = read_manifest(manifest)
    assert store.grid == GRID and store.settings == grounder.settings
    with open(manifest) as handle:
        expected = grounder.priors([json.loads(line) for line in handle], GRID)
    reopened = PriorStore(str(tmp_path / "priors"))  # what training's data.priors opens
    for record, prior, flat in zip(records, expected.prior, expected.flat):
        stored, stored_flat = reopened.get(record.key)
        assert stored.shape == (GRID, GRID) and stored_flat == bool(flat)
        if not flat:  # stored as 8-bit
            assert float((stored - prior).abs().max()) <= 0.5 / 255 + 1e-6
    assert write_priors(manifest, str(tmp_path / "priors"), GRID, grounder).names() == reopened.names()


def test_bad_input():
    with pytest.raises(ValueError):
        SimulatedGrounder(miss_rate=1.5)
    with pytest.raises(ValueError):
        SimulatedGrounder(jitter=-0.1)
    with pytest.raises(TypeError):
        SimulatedGrounder(seed="0")
    with pytest.raises(ValueError):
        SimulatedGrounder().priors([{"key": "a", "action": "add", "target": "ball", "meta": {}}], GRID)
    with pytest.raises(TypeError):
        SimulatedGrounder().priors(["row"], GRID)
    with pytest.raises(ValueError):
        SimulatedGrounder().priors([], 0)
