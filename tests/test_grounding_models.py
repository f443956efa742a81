"""The whole grounding path on tiny randomly initialised Grounding DINO and SAM 2 models, saved and loaded
back through Grounder.from_pretrained (no downloads)."""
import json

import pytest
import torch

from sigma_fast.grounding import EditTuple, Grounder

GRID = 37
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "dog", "cat", "red", "car", "hat", "tree", "man"]


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """Tiny Grounding DINO (with a BERT tokenizer and its image processor) and tiny SAM 2, each a folder."""
    from transformers import (BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoProcessor, Sam2Config, Sam2HieraDetConfig, Sam2MaskDecoderConfig,
                              Sam2Model, Sam2PromptEncoderConfig, Sam2VisionConfig, SwinConfig)
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil)

    torch.manual_seed(0)
    detector = tmp_path_factory.mktemp("detector")
    (detector / "vocab.txt").write_text("\n".join(VOCAB + [f"w{i}" for i in range(99 - len(VOCAB))]))
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 224, "longest_edge": 224}),
        tokenizer=BertTokenizerFast(vocab_file=str(detector / "vocab.txt")))
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=224, embed_dim=16, depths=[1] * 4, num_heads=[1, 1, 2, 2],
                                   window_size=7, out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=37),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_feature_levels=4,
        encoder_n_points=2, decoder_n_points=2, max_text_len=32)
    GroundingDinoForObjectDetection(config).save_pretrained(detector)
    processor.save_pretrained(detector)

    segmenter = tmp_path_factory.mktemp("segmenter")
    config = Sam2Config(
        vision_config=Sam2VisionConfig(
            backbone_config=Sam2HieraDetConfig(
                hidden_size=12, image_size=128, embed_dim_per_stage=[12, 24, 48, 96],
                num_attention_heads_per_stage=[1, 1, 2, 2], blocks_per_stage=[1, 1, 2, 1],
                window_size_per_stage=[8, 4, 4, 2], global_attention_blocks=[3],
                window_positional_embedding_background_size=[4, 4]),
            backbone_channel_list=[96, 48, 24, 12], backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
            fpn_hidden_size=32),
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                                  iou_head_hidden_dim=32))
    Sam2Model(config).save_pretrained(segmenter)
    return str(detector), str(segmenter)


def load(model_folders, **kwargs):
    detector, segmenter = model_folders
    kwargs = {"box_threshold": 0.0, "text_threshold": 0.0, **kwargs}  # random models: keep every box
    return Grounder.from_pretrained(detector, segmenter, device="cpu", **kwargs)


def count_forwards(grounder):
    """Count the calls of both models' forward."""
    counts = {"detector": 0, "segmenter": 0}
    for name in counts:
        model = getattr(grounder, name)
        real = model.forward

        def forward(*args, _name=name, _real=real, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        model.forward = forward
    return counts


def pairs():
    generator = torch.Generator().manual_seed(1)
    sizes = [((96, 128), (96, 128)), ((150, 90), (120, 72)), ((64, 200), (64, 200))]
    originals = [torch.randint(0, 256, (*a, 3), dtype=torch.uint8, generator=generator) for a, _ in sizes]
    editeds = [torch.randint(0, 256, (*b, 3), dtype=torch.uint8, generator=generator) for _, b in sizes]
    return originals, editeds


EDITS = [EditTuple("replace", "dog", "cat"), EditTuple("attribute_change", "car", "red"), EditTuple("global")]


def test_priors_batched_over_pairs_of_different_sizes(model_folders):
    grounder = load(model_folders, max_boxes=3, batch_size=2)
    counts = count_forwards(grounder)
    originals, editeds = pairs()
    result = grounder.priors(originals, editeds, EDITS, GRID)
    assert result.prior.shape == (3, GRID, GRID) and result.prior.dtype == torch.float32
    assert 0 <= float(result.prior.min()) and float(result.prior.max()) <= 1
    assert result.flat.tolist() == [False, False, True]
    assert bool((result.prior[2] == 1).all()) and float(result.prior[:2].min()) < 1
    # Four jobs (dog, cat, car twice) in chunks of two: two detector and two segmenter forwards.
    assert counts == {"detector": 2, "segmenter": 2}
    assert [[(b["concept"], b["image"]) for b in boxes] for boxes in result.boxes] == [
        [("dog", "original")] * 3 + [("cat", "edited")] * 3, [("car", "original")] * 3 + [("car", "edited")] * 3, []]
    for boxes, original, edited in zip(result.boxes, originals, editeds):
        for box in boxes:
            height, width = (original if box["image"] == "original" else edited).shape[:2]
            x0, y0, x1, y1 = box["box"]
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height and 0 <= box["score"] <= 1
    json.dumps(result.boxes)


def test_cache_skips_the_models(model_folders, tmp_path):
    originals, editeds = pairs()
    grounder = load(model_folders, cache_dir=str(tmp_path))
    counts = count_forwards(grounder)
    first = grounder.priors(originals, editeds, EDITS, GRID)
    assert counts["detector"] > 0 and counts["segmenter"] > 0
    seen = dict(counts)
    again = grounder.priors(originals, editeds, EDITS, GRID)
    assert counts == seen
    assert torch.equal(first.prior, again.prior) and first.boxes == again.boxes

    # A new grounder on the same folder reads the disk cache; other thresholds are other entries.
    reloaded = load(model_folders, cache_dir=str(tmp_path))
    counts = count_forwards(reloaded)
    from_disk = reloaded.priors(originals, editeds, EDITS, GRID)
    assert counts == {"detector": 0, "segmenter": 0}
    assert torch.equal(first.prior, from_disk.prior) and first.boxes == from_disk.boxes
    stricter = load(model_folders, cache_dir=str(tmp_path), box_threshold=1.0)
    counts = count_forwards(stricter)
    stricter.priors(originals, editeds, EDITS, GRID)
    assert counts["detector"] > 0


def test_nothing_above_threshold_is_flat(model_folders):
    grounder = load(model_folders, box_threshold=1.0)  # a sigmoid score never exceeds 1
    counts = count_forwards(grounder)
    originals, editeds = pairs()
    result = grounder.priors(originals, editeds, EDITS, GRID)
    assert result.flat.tolist() == [True, True, True]
    assert bool((result.prior == 1).all()) and result.boxes == [[], [], []]
    assert counts == {"detector": 1, "segmenter": 0}


def test_segmentation_does_not_depend_on_the_batch(model_folders):
    """Images with fewer boxes are padded with their first box: the union must not change."""
    grounder = load(model_folders)
    originals, _ = pairs()
    boxes = [[(10.0, 10.0, 60.0, 50.0, 0.9), (0.0, 0.0, 30.0, 30.0, 0.5), (40.0, 20.0, 120.0, 90.0, 0.4)],
             [(5.0, 20.0, 80.0, 140.0, 0.8)]]
    together = grounder._segment(originals[:2], boxes)
    alone = [grounder._segment([image], [image_boxes])[0] for image, image_boxes in zip(originals[:2], boxes)]
    for mask, single, image in zip(together, alone, originals):
        assert mask.dtype == torch.bool and mask.shape == image.shape[:2]
        assert torch.equal(mask, single)


def test_annotator_with_grounded_prior_writes_priors(model_folders, tiny_checkpoint, tmp_path):
    import numpy as np
    from PIL import Image

    from sigma_fast.annotate import Annotator
    from sigma_fast.pipeline import annotate_manifest

    originals, editeds = pairs()
    rows = []
    for index, (original, edited) in enumerate(zip(originals, editeds)):
        Image.fromarray(original.numpy()).save(tmp_path / f"o{index}.png")
        Image.fromarray(edited.numpy()).save(tmp_path / f"e{index}.png")
        rows.append({"original": f"o{index}.png", "edited": f"e{index}.png",
                     "instruction": ["replace the dog with a cat", "make the car red", "make it winter"][index]})
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    annotator = Annotator.from_pretrained(tiny_checkpoint, device="cpu", prior="grounded",
                                          grounder=load(model_folders, max_boxes=2))
    results = annotator.annotate_batch(originals, editeds, ["replace the dog with a cat", "make the car red",
                                                            "make it winter"])
    grid = annotator.model.grid
    assert [r.prior.shape for r in results] == [(grid, grid)] * 3
    assert [r.prior_flat for r in results] == [False, False, True]
    assert results[0].boxes and all(box["concept"] in ("dog", "cat") for box in results[0].boxes)
    flat = Annotator.from_pretrained(tiny_checkpoint, device="cpu").annotate_batch(originals[:1], editeds[:1],
                                                                                    ["replace the dog with a cat"])
    assert not np.array_equal(flat[0].prob, results[0].prob)  # the prior reaches the model

    annotate_manifest(annotator, str(tmp_path / "pairs.jsonl"), str(tmp_path / "out"), progress=False)
    metadata = [json.loads(line) for line in open(tmp_path / "out" / "metadata.jsonl")]  # in input order
    assert [row["prior_flat"] for row in metadata] == [False, False, True]
    for row in metadata:
        assert Image.open(tmp_path / "out" / row["prior"]).size == (grid, grid)
    assert metadata[0]["boxes"][0]["image"] in ("original", "edited")
