import os

import pytest
import torch

from sigma_fast import kernels, ops
from sigma_fast.grounding import parse_instruction
from sigma_fast.model import DifferenceBranch, SigmaModel
from sigma_fast.train import load_train_config, train
from sigma_fast.train.augment import augment_pairs
from sigma_fast.train.config import AugmentConfig, VaeConfig
from sigma_fast.train.ema import EmaTeacher
from sigma_fast.train.losses import disentangle_loss, edit_prototype
from sigma_fast.train.vae import VaeRoundTrip, calibrate, make_vae_pairs, measure_noise_stats
from train_helpers import CONFIGS, make_pair, write_manifest, write_parquet, write_tiny_vae

SIZE = 56


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    return write_tiny_vae(str(tmp_path_factory.mktemp("vae")))


@pytest.fixture(scope="module")
def vae(vae_folder):
    return VaeRoundTrip.from_config(VaeConfig(enabled=True, model=vae_folder), "cpu")


def pair_batch(count, seed=0):
    """A labelled batch as the stream makes it: uint8 (B, S, S, 3) pairs and (B, S, S) masks."""
    pairs = [make_pair(seed + index, size=SIZE) for index in range(count)]
    return {"original": torch.stack([torch.from_numpy(p[0]) for p in pairs]),
            "edited": torch.stack([torch.from_numpy(p[1]) for p in pairs]),
            "mask": torch.stack([torch.from_numpy(p[2] > 0).float() for p in pairs]),
            "instruction": [p[3] for p in pairs], "edit": [parse_instruction(p[3]) for p in pairs],
            "kind": ["positive"] * count}


def test_vae_scale_and_shift_come_from_the_vae_or_the_config(vae, tmp_path):
    assert (vae.scale, vae.shift) == (pytest.approx(0.18215), 0.0)
    flux_like = write_tiny_vae(str(tmp_path / "flux"), latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159)
    flux = VaeRoundTrip.from_config(VaeConfig(enabled=True, model=flux_like), "cpu")
    assert (flux.scale, flux.shift) == (pytest.approx(0.3611), pytest.approx(0.1159))
    explicit = VaeRoundTrip.from_config(VaeConfig(enabled=True, model=flux_like, scale=0.5, shift=0.0), "cpu")
    assert (explicit.scale, explicit.shift) == (0.5, 0.0)
    images = pair_batch(2)["original"][:, :50, :50]  # not a multiple of 8: padded, then cropped
    roundtrip = flux.roundtrip(images)
    assert roundtrip.shape == images.shape and roundtrip.dtype == torch.uint8
    assert not torch.equal(roundtrip, images)


def test_noise_only_pairs_and_composites(vae):
    batch = pair_batch(4)
    before = {name: value.clone() for name, value in batch.items() if isinstance(value, torch.Tensor)}
    make_vae_pairs(batch, vae, noise_fraction=0.5, composite_fraction=0.5, generator=torch.Generator().manual_seed(0))
    assert sorted(batch["kind"]) == ["composite", "composite", "noise", "noise"]
    roundtrip = vae.roundtrip(before["original"])
    for index, kind in enumerate(batch["kind"]):
        assert torch.equal(batch["original"][index], before["original"][index])
        if kind == "noise":  # (original, its round trip), nothing edited
            assert batch["mask"][index].sum() == 0
            assert torch.equal(batch["edited"][index], roundtrip[index])
        else:  # the edit pasted on the round trip, the edit region as target
            inside = before["mask"][index] > 0.5
            assert torch.equal(batch["mask"][index], before["mask"][index])
            assert torch.equal(batch["edited"][index][inside], before["edited"][index][inside])
            assert torch.equal(batch["edited"][index][~inside], roundtrip[index][~inside])


def tiny_model(tiny_checkpoint):
    torch.manual_seed(0)
    return SigmaModel.from_pretrained(tiny_checkpoint)


def test_global_edits_never_become_noise_only_pairs(vae):
    # a global instruction over a whole-image change is what a global edit looks like: as a
    # noise-only pair (target all zero) it would teach the model to deny global edits
    batch = pair_batch(4)
    batch["instruction"][1] = batch["instruction"][3] = "make it look like winter"
    batch["edit"] = [parse_instruction(text) for text in batch["instruction"]]
    assert [edit.action for edit in batch["edit"]].count("global") == 2
    for seed in range(8):
        trial = {name: value.clone() if isinstance(value, torch.Tensor) else list(value) for name, value in batch.items()}
        make_vae_pairs(trial, vae, noise_fraction=0.5, composite_fraction=0.0, generator=torch.Generator().manual_seed(seed))
        assert trial["kind"] == ["noise", "positive", "noise", "positive"]


def test_a_global_edits_composite_is_the_round_trip_of_its_edited_image(vae):
    # an editor's global edit passes through its VAE everywhere: the composite is round trip of
    # the edited image (not the clean edit pasted over the whole frame), and its target stays whole
    batch = pair_batch(2)
    batch["instruction"] = ["make it look like winter"] * 2
    batch["edit"] = [parse_instruction(text) for text in batch["instruction"]]
    batch["mask"][:] = 1.0
    edited = batch["edited"].clone()
    make_vae_pairs(batch, vae, noise_fraction=0.0, composite_fraction=1.0, generator=torch.Generator().manual_seed(0))
    assert batch["kind"] == ["composite", "composite"]
    assert torch.equal(batch["edited"], vae.roundtrip(edited))
    assert not torch.equal(batch["edited"], edited)
    assert bool((batch["mask"] == 1).all())


def test_calibration_measures_noise_stats_and_preserves_the_function(tiny_checkpoint, vae, tmp_path):
    model = tiny_model(tiny_checkpoint)
    batches = [pair_batch(3, seed=0)["original"], pair_batch(2, seed=10)["original"]]
    mean, std = measure_noise_stats(model, vae, batches)
    # the pooled statistics equal feature_diff_stats over all noise-only pairs at once
    everything, roundtrips = torch.cat(batches), torch.cat([vae.roundtrip(batch) for batch in batches])
    x_orig, x_noise = ops.preprocess_pairs(list(everything), list(roundtrips), size=SIZE)
    with torch.no_grad():
        taps = model.backbone(torch.cat([x_orig, x_noise]))
    expected_mean, expected_std = kernels.feature_diff_stats([t[:5] for t in taps], [t[5:] for t in taps])
    torch.testing.assert_close(mean, expected_mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(std, expected_std, atol=1e-5, rtol=1e-4)

    batch = pair_batch(2, seed=20)
    x_orig, x_edit = ops.preprocess_pairs(list(batch["original"]), list(batch["edited"]), size=SIZE)
    tokens, text_mask = model.encode_text(batch["instruction"], batch["edit"])
    with torch.no_grad():
        before = model(x_orig, x_edit, tokens, text_mask)
        calibrate(model.difference, mean, std)
        after = model(x_orig, x_edit, tokens, text_mask)
    assert bool(model.difference.calibrated)
    torch.testing.assert_close(model.difference.noise_mean, mean)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    model.save_pretrained(str(tmp_path / "calibrated"))  # the statistics travel with the checkpoint
    reloaded = SigmaModel.from_pretrained(str(tmp_path / "calibrated"))
    assert bool(reloaded.difference.calibrated)
    torch.testing.assert_close(reloaded.difference.noise_std, model.difference.noise_std)


def test_ema_teacher(tiny_checkpoint):
    student = tiny_model(tiny_checkpoint)
    teacher = EmaTeacher(student, decay=0.999, warmup=True)
    assert teacher.model.backbone is student.backbone  # the frozen encoders are shared, not copied
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): warm-up
    start = {name: value.clone() for name, value in teacher.model.head_state_dict().items()}
    with torch.no_grad():
        for parameter in student.decoder.parameters():
            parameter.add_(1.0)
    teacher.update(student)
    name = "decoder.head.bias"
    torch.testing.assert_close(teacher.model.head_state_dict()[name], 0.1 * start[name] + 0.9 * student.decoder.head.bias)
    assert teacher.current_decay() == pytest.approx(2 / 11)
    teacher.updates = 100000
    assert teacher.current_decay() == 0.999
    teacher.reset(student)  # self-training starts later: the teacher restarts from the student
    assert teacher.updates == 0 and teacher.current_decay() == pytest.approx(0.1)
    torch.testing.assert_close(teacher.model.head_state_dict()[name], student.decoder.head.bias)


@pytest.mark.parametrize("bias, label, weight", [(5.0, 1.0, 1.0), (-5.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.0, 0.0, 0.0)])
def test_pseudo_labels_are_weighted_by_the_teachers_confidence(tiny_checkpoint, bias, label, weight):
    teacher = EmaTeacher(tiny_model(tiny_checkpoint), decay=0.999)
    with torch.no_grad():  # a teacher whose logit is `bias` everywhere
        teacher.model.decoder.head.weight.zero_()
        teacher.model.decoder.head.bias.fill_(bias)
    batch = pair_batch(2)
    x_orig, x_edit = ops.preprocess_pairs(list(batch["original"]), list(batch["edited"]), size=SIZE)
    labels, weights = teacher.pseudo_label(x_orig, x_edit, batch["instruction"], batch["edit"], confidence=0.9)
    assert labels.shape == weights.shape == (2, SIZE, SIZE)
    assert (labels == label).all() and (weights == weight).all()


def test_pseudo_label_weight_is_the_images_confident_share(tiny_checkpoint, monkeypatch):
    teacher = EmaTeacher(tiny_model(tiny_checkpoint), decay=0.999)
    logits = torch.zeros(2, 1, SIZE, SIZE)
    logits[0, :, : SIZE // 4] = 6.0  # image 0: a quarter confidently edited, the rest unsure
    logits[1] = -6.0  # image 1: confidently unedited everywhere
    monkeypatch.setattr(teacher.model, "forward", lambda *args: logits)
    batch = pair_batch(2)
    x_orig, x_edit = ops.preprocess_pairs(list(batch["original"]), list(batch["edited"]), size=SIZE)
    labels, weights = teacher.pseudo_label(x_orig, x_edit, batch["instruction"], batch["edit"], confidence=0.9)
    assert labels[0, : SIZE // 4].eq(1).all() and labels[0, SIZE // 4:].eq(0).all() and labels[1].eq(0).all()
    assert torch.allclose(weights[0], torch.full((SIZE, SIZE), 0.25)) and weights[1].eq(1).all()


def test_augmentation_is_identical_on_both_images_and_the_label():
    batch = pair_batch(4)
    config = AugmentConfig(translate=0.2)
    weight = torch.ones(4, SIZE, SIZE)
    flat = torch.ones(4, 4, 4)
    original, edited, label, kept, prior = augment_pairs(batch["original"], batch["edited"], batch["mask"], weight,
                                                         flat, config, torch.Generator().manual_seed(1))
    assert torch.equal(prior, flat)  # a flat prior stays flat wherever the pixels move
    assert original.dtype == torch.uint8 and original.shape == batch["original"].shape
    assert not torch.equal(original, batch["original"])
    assert (kept == 0).any() and (kept == 1).any()  # pixels moved in from outside the frame are ignored
    # an unedited pair stays identical: same photometric and geometric transform, same noise
    same, same_edited, *_ = augment_pairs(batch["original"], batch["original"], batch["mask"], weight, flat,
                                          config, torch.Generator().manual_seed(1))
    assert torch.equal(same, same_edited)
    # where the augmented images differ is where the augmented label is
    changed = ((original.int() - edited.int()).abs().amax(-1) > 0).float() * kept
    labelled = label * kept
    iou = (changed * labelled).sum() / ((changed + labelled) > 0).sum()
    assert iou > 0.85


def test_augmentation_moves_the_prior_with_the_pixels():
    batch = pair_batch(4)
    weight = torch.ones(4, SIZE, SIZE)
    config = AugmentConfig(translate=0.0, rotate_degrees=0.0, scale=(1.0, 1.0), hflip=1.0, resave=0.0)
    prior = torch.zeros(4, 8, 8)
    prior[:, :, :2] = 1.0  # the left quarter
    _, _, label, _, moved = augment_pairs(batch["original"], batch["edited"], batch["mask"], weight, prior, config,
                                          torch.Generator().manual_seed(1))
    assert torch.equal(label, batch["mask"].flip(-1))  # a flip of every pair ...
    assert torch.allclose(moved, prior.flip(-1))  # ... flips the prior the same way


def test_resave_changes_the_edited_image_only():
    batch = pair_batch(4)
    weight = torch.ones(4, SIZE, SIZE)

    def augmented(**resave):
        return augment_pairs(batch["original"], batch["edited"], batch["mask"], weight, torch.ones(4, 4, 4),
                             AugmentConfig(translate=0.2, **resave), torch.Generator().manual_seed(1))

    plain, resaved = augmented(), augmented(resave=1.0, resave_scale=(0.5, 0.5), resave_quality=(30, 30))
    for index in (0, 2, 3):  # original, label, weight: the same draws, untouched by the resave
        assert torch.equal(plain[index], resaved[index])
    # the edited image changes everywhere a little (a resave), not only where the edit is
    difference = (plain[1].float() - resaved[1].float()).abs().mean(-1)
    outside = (plain[2] == 0) & (plain[3] == 1)
    assert difference[outside].mean() > 1.0 and difference.max() < 255
    untouched = augmented(resave=0.0, resave_scale=(0.5, 0.5))
    assert torch.equal(untouched[1], plain[1])


def test_disentangle_loss_formula():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]]])  # (1, 4, 2)
    coverage = torch.tensor([[1.0, 0.0, 0.0, 0.3]])  # edited, noise, noise, ignored
    loss, separation = disentangle_loss(tokens, coverage, margin=1.5)
    # per noise token: 1 - cos with the prototype (1, 0) is 1 and 1 - 1/sqrt(2)
    distances = torch.tensor([1.0, 1 - 2 ** -0.5])
    assert separation == pytest.approx(distances.mean().item())
    assert loss == pytest.approx((1.5 - distances).mean().item())
    # a margin met by the first noise token but not the second: only the second counts
    assert disentangle_loss(tokens, coverage, margin=1.0)[0] == pytest.approx((1.0 - distances[1]).item() / 2)
    assert disentangle_loss(tokens[:, [0, 1]], coverage[:, [0, 1]], margin=1.0)[0] == 0
    no_edit, none = disentangle_loss(tokens, torch.zeros(1, 4), margin=1.0)
    assert no_edit == 0 and none is None and no_edit.requires_grad is False


def test_optimising_the_disentangle_loss_separates_edit_from_noise():
    torch.manual_seed(0)
    batch, tokens, channels, taps = 4, 16, 8, 2
    f_orig = [torch.randn(batch, tokens, channels) for _ in range(taps)]
    edited = torch.zeros(batch, tokens, dtype=torch.bool)
    edited[:, :5] = True
    # noise-only tokens change a little (VAE noise), edited tokens change completely
    f_edit = [torch.where(edited[..., None], torch.randn(batch, tokens, channels), f + 0.1 * torch.randn_like(f))
              for f in f_orig]
    coverage = edited.float()
    branch = DifferenceBranch(channels, taps, dim=16)
    with torch.no_grad():  # a branch that still responds alike everywhere: a large shared component
        branch.bias.fill_(2.0)
    optimizer = torch.optim.Adam(branch.parameters(), lr=1e-2)

    def closest_noise_token():
        with torch.no_grad():
            prototype, noise = edit_prototype(branch(f_orig, f_edit), coverage)
        return (1 - torch.nn.functional.cosine_similarity(noise, prototype[None], dim=1)).min().item()

    start = closest_noise_token()
    first_loss = None
    for _ in range(60):
        loss, _ = disentangle_loss(branch(f_orig, f_edit), coverage, margin=1.0)
        first_loss = loss.item() if first_loss is None else first_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # every noise-only token, the closest one included, moves away from the edit prototype
    assert start < 0.5 and closest_noise_token() > start + 0.4
    assert disentangle_loss(branch(f_orig, f_edit), coverage, margin=1.0)[0].item() < first_loss


def test_stage2_run_calibrates_self_trains_and_resumes_exactly(tiny_checkpoint, vae_folder, tmp_path):
    from safetensors.torch import load_file

    train_path = write_parquet(tmp_path / "train.parquet", 24)
    unlabelled = write_manifest(tmp_path / "unlabelled", 8, seed=7, with_mask=False)

    def config(run, **extra):
        return load_train_config(str(CONFIGS / "tiny_stage2.yaml"), stage=2, init=tiny_checkpoint, overrides={
            "output_dir": str(run), "data.train": [{"format": "parquet", "path": str(train_path)}],
            "data.unlabelled": [{"format": "manifest", "path": unlabelled}], "stage2.vae.model": vae_folder, **extra})

    full = train(config(tmp_path / "full"), progress=False)
    assert full["step"] == 6 and all(torch.isfinite(torch.tensor(full["losses"])))
    header = (tmp_path / "full" / "train.csv").read_text().splitlines()[0]
    assert "ema_bce" in header and "separation" in header
    head = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    assert bool(head["difference.calibrated"]) and head["difference.noise_std"].std() > 0
    assert os.path.isfile(tmp_path / "full" / "final_ema" / "model.safetensors")
    resumed = train(config(tmp_path / "resumed"), resume=str(tmp_path / "full" / "checkpoints" / "step_00000003"),
                    progress=False)
    assert resumed["losses"] == pytest.approx(full["losses"][3:], abs=1e-6, rel=0)
    # an ablation is one flag: the same run without EMA self-training logs no EMA columns
    # self-training from step 4: no EMA loss before it, and a resume from step 3 crosses the start exactly
    delayed = train(config(tmp_path / "delayed", **{"stage2.ema.start_step": 4}), progress=False)
    rows = [line.split(",") for line in (tmp_path / "delayed" / "train.csv").read_text().splitlines()]
    ema_column = rows[0].index("ema_bce")
    assert [row[ema_column] != "" for row in rows[1:]] == [False, False, True]  # logged at steps 2, 4, 6
    resumed = train(config(tmp_path / "delayed_resumed", **{"stage2.ema.start_step": 4}),
                    resume=str(tmp_path / "delayed" / "checkpoints" / "step_00000003"), progress=False)
    assert resumed["losses"] == pytest.approx(delayed["losses"][3:], abs=1e-6, rel=0)
    ablated = train(config(tmp_path / "no_ema", **{"stage2.ema.enabled": False, "optim.steps": 1}), progress=False)
    assert ablated["step"] == 1
    assert "ema_bce" not in (tmp_path / "no_ema" / "train.csv").read_text().splitlines()[0]


def test_the_teacher_sees_the_students_prior(tiny_checkpoint, monkeypatch):
    import contextlib
    from types import SimpleNamespace

    from sigma_fast.train.config import EmaConfig, Stage2Config
    from sigma_fast.train.loop import Trainer

    model = tiny_model(tiny_checkpoint)
    teacher = EmaTeacher(model, decay=0.999)
    seen, real = [], teacher.model.forward
    monkeypatch.setattr(teacher.model, "forward", lambda *args: seen.append(args[4]) or real(*args))
    batch = pair_batch(2)
    batch["prior"] = torch.rand(2, model.grid, model.grid, generator=torch.Generator().manual_seed(0))
    flip = AugmentConfig(hflip=1.0, rotate_degrees=0.0, scale=(1.0, 1.0), translate=0.0)
    trainer = SimpleNamespace(model=model, teacher=teacher, grid=model.grid, device=torch.device("cpu"),
                              config=SimpleNamespace(stage2=Stage2Config(ema=EmaConfig(augment=flip))),
                              autocast=contextlib.nullcontext)
    *_, student_prior = Trainer._unlabelled_inputs(trainer, batch, torch.Generator().manual_seed(0))
    assert len(seen) == 1 and torch.equal(seen[0], batch["prior"])  # the teacher: the stored prior
    assert torch.allclose(student_prior, batch["prior"].flip(-1))  # the student: it, flipped with its pixels
