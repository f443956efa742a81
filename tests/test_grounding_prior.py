"""The prior's construction from given boxes and masks: deterministic, no models."""
import json

import pytest
import torch

from sigma_fast.grounding import EditTuple, Grounder, GroundingResult, flat_prior, prior_from_masks
from sigma_fast.grounding.cache import GroundingCache, entry_key, image_digest
from sigma_fast.grounding.prior import EDITED, ORIGINAL, Grounding, assemble_priors, grounding_jobs

GRID = 37


def block_mask(height, width, y0, y1, x0, x1):
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def cells(y0, y1, x0, x1, grid=GRID):
    expected = torch.zeros(grid, grid)
    expected[y0:y1, x0:x1] = 1
    return expected


def test_flat_prior():
    prior = flat_prior(3, GRID)
    assert prior.shape == (3, GRID, GRID) and prior.dtype == torch.float32 and bool((prior == 1).all())


def test_prior_is_coverage_dilated_by_one_cell():
    # 74 x 74 pixels on a 37 grid: 2 x 2 pixels a cell; pixels 10..19 are cells 5..9.
    prior = prior_from_masks([block_mask(74, 74, 10, 20, 10, 20)], GRID)
    assert prior.dtype == torch.float32
    assert torch.equal(prior, cells(4, 11, 4, 11))


def test_partial_cells_are_soft():
    # Pixel row 11 alone covers half of cell row 5; the dilation carries that half to rows 4 and 6.
    prior = prior_from_masks([block_mask(74, 74, 11, 12, 10, 12)], GRID)
    expected = torch.zeros(GRID, GRID)
    expected[4:7, 4:7] = 0.5
    assert torch.allclose(prior, expected)
    assert 0 <= prior.min() and prior.max() <= 1


def test_masks_of_different_sizes_meet_in_normalised_coordinates():
    # Left half of a 74 x 74 original (cells 0..17) and the right of a 37 x 111 edited image (3 pixels
    # a cell column: pixel 75 starts cell 25).
    original = block_mask(74, 74, 0, 74, 0, 36)
    edited = block_mask(37, 111, 0, 37, 75, 111)
    prior = prior_from_masks([original, edited], GRID)
    assert torch.equal(prior, torch.maximum(cells(0, GRID, 0, 19), cells(0, GRID, 24, GRID)))


def test_no_mask_is_no_prior():
    assert prior_from_masks([], GRID) is None
    assert prior_from_masks([None], GRID) is None


@pytest.mark.parametrize("edit, jobs", [
    (EditTuple("remove", "dog"), [(ORIGINAL, "dog")]),
    (EditTuple("add", None, "cat"), [(EDITED, "cat")]),
    (EditTuple("replace", "dog", "cat"), [(ORIGINAL, "dog"), (EDITED, "cat")]),
    (EditTuple("attribute_change", "car", "red"), [(ORIGINAL, "car"), (EDITED, "car")]),
    (EditTuple("global"), []),
    (EditTuple("unknown"), []),
    (EditTuple("remove", "cup", extra=(EditTuple("add", None, "plate"), EditTuple("remove", "cup"))),
     [(ORIGINAL, "cup"), (EDITED, "plate")]),
    (EditTuple("add", None, "hat", extra=(EditTuple("global"),)), []),
])
def test_grounding_jobs(edit, jobs):
    assert grounding_jobs(edit) == jobs


# Given masks, per image and concept, on a 74 x 74 original and a 74 x 74 edited image.
GIVEN = {
    (ORIGINAL, "dog"): block_mask(74, 74, 0, 10, 0, 10),    # cells 0..4, dilated 0..5
    (EDITED, "cat"): block_mask(74, 74, 60, 74, 60, 74),    # cells 30..36, dilated 29..36
    (ORIGINAL, "car"): block_mask(74, 74, 30, 40, 0, 10),   # cells 15..19 x 0..4
    (EDITED, "car"): block_mask(74, 74, 30, 40, 20, 30),    # moved right: cells 15..19 x 10..14
}


@pytest.mark.parametrize("edit, expected", [
    (EditTuple("remove", "dog"), cells(0, 6, 0, 6)),
    (EditTuple("add", None, "cat"), cells(29, GRID, 29, GRID)),
    (EditTuple("replace", "dog", "cat"), torch.maximum(cells(0, 6, 0, 6), cells(29, GRID, 29, GRID))),
    (EditTuple("attribute_change", "car", "red"), torch.maximum(cells(14, 21, 0, 6), cells(14, 21, 9, 16))),
    (EditTuple("global"), torch.ones(GRID, GRID)),
    (EditTuple("unknown"), torch.ones(GRID, GRID)),
])
def test_prior_per_action(edit, expected):
    groundings = [[Grounding(((0.0, 0.0, 1.0, 1.0, 0.9),), GIVEN[job]) for job in grounding_jobs(edit)]]
    prior, flat = assemble_priors(groundings, GRID)
    assert prior.shape == (1, GRID, GRID) and prior.dtype == torch.float32
    assert torch.equal(prior[0], expected)
    assert bool(flat[0]) == (not edit.is_local)


def test_nothing_found_is_flat():
    prior, flat = assemble_priors([[Grounding((), None)], [Grounding((), None), Grounding((), GIVEN[EDITED, "cat"])]],
                                  GRID)
    assert flat.tolist() == [True, False]
    assert bool((prior[0] == 1).all()) and torch.equal(prior[1], cells(29, GRID, 29, GRID))


class GivenGrounder(Grounder):
    """The real Grounder with the models replaced by given boxes and masks, keyed by image size and concept."""

    def __init__(self, given, **kwargs):
        stand_in = torch.nn.Linear(1, 1)
        super().__init__(stand_in, None, stand_in, **kwargs)
        self.given = given
        self.jobs_run = []

    def _ground(self, jobs):
        self.jobs_run.extend((tuple(image.shape), concept) for image, concept in jobs)
        return [self.given.get((tuple(image.shape), concept), Grounding((), None)) for image, concept in jobs]


def test_grounder_grounds_each_concept_on_its_image(tmp_path):
    original = torch.zeros(74, 74, 3, dtype=torch.uint8)
    edited = torch.zeros(37, 111, 3, dtype=torch.uint8)  # another size, as in HQ-Edit
    given = {
        ((74, 74, 3), "dog"): Grounding(((0.0, 0.0, 10.0, 10.0, 0.8),), block_mask(74, 74, 0, 10, 0, 10)),
        ((37, 111, 3), "cat"): Grounding(((75.0, 0.0, 111.0, 37.0, 0.7),), block_mask(37, 111, 0, 37, 75, 111)),
    }
    grounder = GivenGrounder(given, cache=GroundingCache(tmp_path))
    edits = [EditTuple("replace", "dog", "cat"), EditTuple("remove", "cat"), EditTuple("global"),
             EditTuple("add", None, "dog")]
    result = grounder.priors([original] * 4, [edited] * 4, edits, GRID)
    assert isinstance(result, GroundingResult)
    assert result.prior.shape == (4, GRID, GRID) and result.prior.dtype == torch.float32
    assert torch.equal(result.prior[0], torch.maximum(cells(0, 6, 0, 6), cells(0, GRID, 24, GRID)))
    assert result.flat.dtype == torch.bool and result.flat.tolist() == [False, True, True, True]
    assert bool((result.prior[1:] == 1).all())
    assert result.boxes[0] == [
        {"concept": "dog", "image": "original", "box": [0.0, 0.0, 10.0, 10.0], "score": 0.8},
        {"concept": "cat", "image": "edited", "box": [75.0, 0.0, 111.0, 37.0], "score": 0.7},
    ]
    assert result.boxes[1:] == [[], [], []]
    json.dumps(result.boxes)
    # Each (image, concept) is grounded once: "cat" on the original and "dog" on the edited image are
    # new jobs, the repeated replace pair is not.
    assert sorted(grounder.jobs_run) == [((37, 111, 3), "cat"), ((37, 111, 3), "dog"), ((74, 74, 3), "cat"),
                                         ((74, 74, 3), "dog")]


def test_grounder_rejects_bad_images():
    grounder = GivenGrounder({})
    with pytest.raises(ValueError, match="uint8"):
        grounder.priors([torch.zeros(8, 8, 3)], [torch.zeros(8, 8, 3, dtype=torch.uint8)],
                        [EditTuple("remove", "dog")], GRID)
    with pytest.raises(ValueError, match="edits"):
        grounder.priors([], [], [EditTuple("global")], GRID)
    empty = grounder.priors([], [], [], GRID)
    assert empty.prior.shape == (0, GRID, GRID) and empty.flat.shape == (0,)


def test_cache_round_trip_on_disk(tmp_path):
    image = torch.randint(0, 255, (5, 7, 3), dtype=torch.uint8)
    other = image.clone()
    other[0, 0, 0] ^= 1
    assert image_digest(image) == image_digest(image.clone()) != image_digest(other)
    assert image_digest(image) != image_digest(image.reshape(7, 5, 3))
    key = entry_key(image_digest(image), "dog", "settings")
    assert key != entry_key(image_digest(image), "cat", "settings") != entry_key(image_digest(image), "dog", "other")

    mask = torch.rand(13, 29) > 0.5
    GroundingCache(tmp_path).put(key, Grounding(((1.0, 2.0, 3.0, 4.0, 0.5),), mask))
    GroundingCache(tmp_path).put("nothing", Grounding((), None))
    fresh = GroundingCache(tmp_path)
    loaded = fresh.get(key)
    assert loaded.boxes == ((1.0, 2.0, 3.0, 4.0, 0.5),) and torch.equal(loaded.mask, mask)
    assert fresh.get("nothing") == Grounding((), None)
    assert fresh.get("missing") is None
    assert not list(tmp_path.glob("*.part"))


def test_memory_cache_is_bounded():
    cache = GroundingCache(max_entries=2)
    for key in "abc":
        cache.put(key, Grounding((), None))
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") is not None
