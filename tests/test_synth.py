import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sigma_fast.data import synth_perturb, synth_scene
from sigma_fast.data.manifest import read_manifest
from sigma_fast.data.synth import SynthConfig, generate_dataset, generate_pair, sample_seed
from sigma_fast.data.synth_perturb import AutoencoderSettings, autoencoder_path
from sigma_fast.grounding.edit import ACTIONS

TINY_AUTOENCODER = AutoencoderSettings(steps=2, batch=2, crop=32, scenes=2)


def config(**overrides):
    # small images and no autoencoder keep these tests fast; one test covers the autoencoder
    return SynthConfig(**{"image_size": 128, "autoencoder": False, **overrides})


def changed(pair):
    return (pair.original != pair.meta["edited_clean"]).any(-1)


def assert_same_pair(a, b):
    for name in ("original", "edited", "mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.instruction, a.action, a.source, a.target, a.perturbed, a.side_effect, a.meta) == \
           (b.instruction, b.action, b.source, b.target, b.perturbed, b.side_effect, b.meta)


def test_same_seed_gives_the_same_pair_and_other_seeds_differ():
    cfg = config(perturb_prob=1.0, side_effect_prob=0.5)
    pairs = [generate_pair(seed, cfg) for seed in range(4)]
    for seed, pair in enumerate(pairs):
        assert_same_pair(pair, generate_pair(seed, cfg))
    for a, b in itertools.pairwise(pairs):
        assert not np.array_equal(a.original, b.original)
        assert not np.array_equal(a.edited, b.edited)


@pytest.mark.parametrize("action", ACTIONS)
def test_mask_is_exactly_the_pixels_the_edit_changed(action):
    cfg = config(action_weights={action: 1.0}, keep_clean=True, side_effect_prob=0.0)
    for seed in range(6):
        pair = generate_pair(seed, cfg)
        assert pair.action == action
        assert pair.mask.dtype == np.uint8 and pair.mask.shape == pair.original.shape[:2]
        assert set(np.unique(pair.mask)) <= {0, 255}
        np.testing.assert_array_equal(changed(pair), pair.mask > 0)
        if action == "global":
            assert (pair.mask == 255).all() and pair.source is None and pair.target is None
            continue
        inside = pair.mask > 0
        assert 0 < inside.mean() < 0.5
        # most of the change is visible, not the one-level flips that keep mask and change equal
        step = np.abs(pair.original.astype(int) - pair.meta["edited_clean"]).max(-1)[inside]
        assert (step > 10).mean() > 0.2


@pytest.mark.parametrize("action", ["add", "remove", "replace", "attribute_change"])
def test_concepts_are_named_in_the_instruction(action):
    cfg = config(action_weights={action: 1.0}, perturb_prob=0.0)
    for seed in range(6):
        pair = generate_pair(seed, cfg)
        text = pair.instruction.lower()
        assert (pair.source is None) == (action == "add")
        assert (pair.target is None) == (action == "remove")
        if pair.source is not None:
            assert pair.source in text
        if action in ("add", "replace"):
            assert pair.target in text


def test_side_effect_is_in_the_mask_and_away_from_the_edit():
    weights = {"add": 1.0, "remove": 1.0, "replace": 1.0, "attribute_change": 1.0}
    with_effect = config(action_weights=weights, side_effect_prob=1.0, keep_clean=True, perturb_prob=0.0)
    without = config(action_weights=weights, side_effect_prob=0.0, keep_clean=True, perturb_prob=0.0)
    flagged = 0
    for seed in range(8):
        pair, plain = generate_pair(seed, with_effect), generate_pair(seed, without)
        np.testing.assert_array_equal(changed(pair), pair.mask > 0)
        extra = (pair.mask > 0) & (plain.mask == 0)
        assert pair.side_effect == extra.any() == ("side_effect" in pair.meta)
        if not pair.side_effect:
            continue
        flagged += 1
        assert (pair.mask >= plain.mask).all()
        y0, x0, y1, x1 = pair.meta["side_effect"]["bbox"]
        ys, xs = np.nonzero(extra)
        assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1
        assert not (plain.mask[y0:y1, x0:x1] > 0).any()
        np.testing.assert_array_equal(pair.meta["edited_clean"][~extra], plain.meta["edited_clean"][~extra])
    assert flagged >= 6


def test_global_edits_have_no_side_effect():
    cfg = config(action_weights={"global": 1.0}, side_effect_prob=1.0)
    assert not any(generate_pair(seed, cfg).side_effect for seed in range(3))


def test_perturbation_changes_the_whole_image_but_not_the_mask():
    cfg = config(action_weights={"add": 1.0}, keep_clean=True, perturb_prob=1.0)
    pair = generate_pair(0, cfg)
    assert pair.perturbed and set(pair.meta["perturbation"]) == {"autoencoder", "resample", "jpeg_quality"}
    np.testing.assert_array_equal(changed(pair), pair.mask > 0)
    outside = pair.mask == 0
    assert (pair.edited != pair.meta["edited_clean"]).any(-1)[outside].mean() > 0.3
    calm = generate_pair(0, config(action_weights={"add": 1.0}, keep_clean=True, perturb_prob=0.0))
    assert not calm.perturbed
    np.testing.assert_array_equal(calm.edited, calm.meta["edited_clean"])


def test_autoencoder_is_trained_once_then_read_from_the_cache(tmp_path, monkeypatch):
    cfg = config(image_size=64, autoencoder=True, autoencoder_settings=TINY_AUTOENCODER,
                 cache_dir=str(tmp_path), perturb_prob=1.0)
    first = generate_pair(0, cfg)
    assert first.meta["perturbation"]["autoencoder"]
    assert (autoencoder_path(TINY_AUTOENCODER, tmp_path) / "config.json").is_file()

    def no_training(settings):
        raise AssertionError("the cached autoencoder should have been used")

    monkeypatch.setattr(synth_perturb, "_LOADED", {})
    monkeypatch.setattr(synth_perturb, "train_autoencoder", no_training)
    assert_same_pair(first, generate_pair(0, cfg))
    longer = AutoencoderSettings(steps=3, batch=2, crop=32, scenes=2)
    assert autoencoder_path(longer, tmp_path) != autoencoder_path(TINY_AUTOENCODER, tmp_path)


def test_photographs_are_used_when_installed():
    pytest.importorskip("skimage")
    cfg = config(photo_prob=1.0, perturb_prob=0.0)
    assert all(generate_pair(seed, cfg).meta["scene"].startswith("photo:") for seed in range(3))


def test_procedural_scenes_only_without_scikit_image(monkeypatch):
    monkeypatch.setattr(synth_scene, "_skimage_data_dir", lambda: None)
    cfg = config(photo_prob=1.0, perturb_prob=0.0)
    assert all(generate_pair(seed, cfg).meta["scene"] == "procedural" for seed in range(3))


def test_without_shipped_images_scikit_image_makes_no_difference(monkeypatch):
    cfg = config(use_photos=False, perturb_prob=0.0)
    before = [generate_pair(seed, cfg) for seed in range(3)]
    monkeypatch.setattr(synth_scene, "_skimage_data_dir", lambda: None)
    for seed, pair in enumerate(before):
        assert_same_pair(pair, generate_pair(seed, cfg))


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        SynthConfig(action_weights={"paint": 1.0})
    with pytest.raises(ValueError):
        SynthConfig(image_size=100)


def test_dataset_manifest_is_readable_and_byte_identical_on_rerun(tmp_path):
    cfg = config(perturb_prob=0.5, side_effect_prob=0.5)
    manifest = generate_dataset(str(tmp_path / "a"), count=6, seed=3, config=cfg, progress=False)
    records, failures = read_manifest(manifest)
    assert failures == [] and len(records) == 6
    for index, record in enumerate(records):
        pair = generate_pair(sample_seed(3, index), cfg)
        assert record.instruction == pair.instruction
        assert {name: record.extra[name] for name in ("action", "perturbed", "side_effect")} == \
               {"action": pair.action, "perturbed": pair.perturbed, "side_effect": pair.side_effect}
        np.testing.assert_array_equal(np.asarray(Image.open(record.original)), pair.original)
        np.testing.assert_array_equal(np.asarray(Image.open(record.edited).convert("RGB")), pair.edited)
        np.testing.assert_array_equal(np.asarray(Image.open(record.mask)), pair.mask)
        assert record.edited.endswith(".jpg") == pair.perturbed
    again = generate_dataset(str(tmp_path / "b"), count=6, seed=3, config=cfg, progress=False)
    for folder in ("original", "edited", "mask"):
        names = sorted(os.listdir(tmp_path / "a" / folder))
        assert names == sorted(os.listdir(tmp_path / "b" / folder))
        for name in names:
            assert (tmp_path / "a" / folder / name).read_bytes() == (tmp_path / "b" / folder / name).read_bytes()
    assert Path(manifest).read_text() == Path(again).read_text()
