"""The text-grounding branch: Grounding DINO boxes, then SAM 2 masks, then the spatial prior.

    grounder = Grounder.from_pretrained()
    result = grounder.priors(originals, editeds, edits, grid=37)  # GroundingResult

Which concept is grounded on which image, and how masks become the prior: `sigma_fast.grounding.prior`.
SAM 2's input preparation (square resize with antialiasing, ImageNet normalisation, box scaling) and
mask upsampling are done here in torch, as `Sam2Processor` does them, because that processor needs
torchvision (not a dependency) and because this keeps the images on the device.
"""
import torch
import torch.nn.functional as F

from sigma_fast.grounding.cache import GroundingCache, entry_key, image_digest
from sigma_fast.grounding.device import resolve_device, resolve_dtype
from sigma_fast.grounding.prior import EDITED, ORIGINAL, Grounding, GroundingResult, assemble_priors, grounding_jobs

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SEGMENTER = "facebook/sam2.1-hiera-tiny"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Grounder:
    """Grounds parsed edits on (original, edited) pairs into (B, grid, grid) priors, batched and cached.

    `box_threshold`: least detection score kept; `text_threshold`: a kept box must also match a token
    of the concept with at least this score (Grounding DINO's two thresholds); `max_boxes`: most boxes
    per concept and image; `batch_size`: images per detector or segmenter forward.
    """

    def __init__(self, detector, detector_processor, segmenter, *, box_threshold=0.35, text_threshold=0.25,
                 max_boxes=10, batch_size=8, cache=None, model_ids=("detector", "segmenter")):
        self.detector = detector.eval()
        self.detector_processor = detector_processor
        self.segmenter = segmenter.eval()
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.max_boxes = max_boxes
        self.batch_size = batch_size
        self.cache = cache if cache is not None else GroundingCache()
        self.settings = f"{model_ids[0]}|{model_ids[1]}|{box_threshold}|{text_threshold}|{max_boxes}"

    @classmethod
    def from_pretrained(cls, detector=DEFAULT_DETECTOR, segmenter=DEFAULT_SEGMENTER, device=None, dtype=None,
                        box_threshold=0.35, text_threshold=0.25, cache_dir=None, local_files_only=False, **kwargs):
        """Load Grounding DINO (model and processor) and SAM 2 from hub ids or local folders.
        `device` None = the GPU when there is one; `dtype` None = float32; `cache_dir` also keeps the
        groundings on disk there; `local_files_only` never downloads (folders and the hub cache only).
        Further keywords go to the constructor."""
        from transformers import AutoProcessor, GroundingDinoForObjectDetection, Sam2Model

        device, dtype = resolve_device(device), resolve_dtype(dtype)
        local = {"local_files_only": local_files_only}
        detector_model = GroundingDinoForObjectDetection.from_pretrained(detector, dtype=dtype, **local).to(device)
        segmenter_model = Sam2Model.from_pretrained(segmenter, dtype=dtype, **local).to(device)
        return cls(detector_model, AutoProcessor.from_pretrained(detector, **local), segmenter_model,
                   box_threshold=box_threshold, text_threshold=text_threshold,
                   cache=GroundingCache(cache_dir), model_ids=(str(detector), str(segmenter)), **kwargs)

    @property
    def device(self):
        return next(self.detector.parameters()).device

    @torch.inference_mode()
    def priors(self, originals, editeds, edits, grid):
        """Lists of uint8 (H, W, 3) tensors and EditTuples (one per pair) -> GroundingResult."""
        if not len(originals) == len(editeds) == len(edits):
            raise ValueError(f"got {len(originals)} originals, {len(editeds)} edited images and {len(edits)} edits")
        images = {ORIGINAL: [_as_image(x) for x in originals], EDITED: [_as_image(x) for x in editeds]}
        digests = {}  # (side, pair index) -> content hash, computed once per image
        pair_keys, known, todo = [], {}, {}
        for index, edit in enumerate(edits):
            keys = []
            for side, concept in grounding_jobs(edit):
                if (side, index) not in digests:
                    digests[side, index] = image_digest(images[side][index])
                key = entry_key(digests[side, index], concept, self.settings)
                keys.append((key, side, concept))
                if key not in known and key not in todo:
                    cached = self.cache.get(key)
                    if cached is None:
                        todo[key] = (images[side][index], concept)
                    else:
                        known[key] = cached
            pair_keys.append(keys)
        for key, grounding in zip(todo, self._ground(list(todo.values()))):
            self.cache.put(key, grounding)
            known[key] = grounding

        groundings, boxes = [], []
        for keys in pair_keys:
            found = [(side, concept, known[key]) for key, side, concept in keys]
            groundings.append([grounding for _, _, grounding in found])
            boxes.append([{"concept": concept, "image": side, "box": [round(v, 2) for v in box[:4]],
                           "score": round(box[4], 4)}
                          for side, concept, grounding in found for box in grounding.boxes])
        prior, flat = assemble_priors(groundings, grid)
        return GroundingResult(prior=prior, flat=flat, boxes=boxes)

    def _ground(self, jobs):
        """[(image, concept)] -> [Grounding], detector and segmenter batched over the jobs."""
        boxes = []
        for start in range(0, len(jobs), self.batch_size):
            boxes.extend(self._detect(jobs[start:start + self.batch_size]))
        found = [i for i, job_boxes in enumerate(boxes) if job_boxes]
        masks = {}
        for start in range(0, len(found), self.batch_size):
            chunk = found[start:start + self.batch_size]
            for i, mask in zip(chunk, self._segment([jobs[i][0] for i in chunk], [boxes[i] for i in chunk])):
                masks[i] = mask
        return [Grounding(tuple(boxes[i]), masks.get(i)) for i in range(len(jobs))]

    def _detect(self, jobs):
        """Grounding DINO on a chunk of jobs -> per job, up to max_boxes (x0, y0, x1, y1, score)."""
        images = [image.permute(2, 0, 1).cpu() for image, _ in jobs]  # (3, H, W) each
        prompts = [_prompt(concept) for _, concept in jobs]
        inputs = self.detector_processor(images=images, text=prompts, return_tensors="pt", padding=True)
        dtype = next(self.detector.parameters()).dtype
        inputs = {name: value.to(self.device, dtype=dtype if value.is_floating_point() else value.dtype)
                  for name, value in inputs.items()}
        outputs = self.detector(**inputs)  # logits (B, queries, text_len), pred_boxes (B, queries, 4)
        # Post-processing on the CPU in float32: small tensors, and the labels are decoded from token ids.
        outputs.logits, outputs.pred_boxes = outputs.logits.float().cpu(), outputs.pred_boxes.float().cpu()
        results = self.detector_processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"].cpu(), threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[tuple(image.shape[:2]) for image, _ in jobs])
        detections = []
        for result, (image, _) in zip(results, jobs):
            height, width = image.shape[:2]
            # A box none of whose concept tokens passes text_threshold has an empty label: not the concept.
            kept = [(box, score) for box, score, label in zip(result["boxes"], result["scores"],
                                                              result["text_labels"]) if label.strip()]
            kept.sort(key=lambda item: -float(item[1]))
            detections.append([_clip(box.tolist(), width, height) + (float(score),)
                               for box, score in kept[:self.max_boxes]])
        return detections

    def _segment(self, images, boxes):
        """SAM 2 on a chunk of images, each with its boxes -> per image the (H, W) bool union mask."""
        size = self.segmenter.config.prompt_encoder_config.image_size
        dtype = next(self.segmenter.parameters()).dtype
        pixels = torch.cat([_sam_pixels(image.to(self.device), size) for image in images]).to(dtype)  # (B, 3, S, S)
        # The model takes the same number of boxes per image: shorter lists repeat their best box,
        # whose mask is the same, so the union does not change.
        count = max(len(image_boxes) for image_boxes in boxes)
        prompts = torch.tensor([[list(box[:4]) for box in image_boxes] + [list(image_boxes[0][:4])] *
                                (count - len(image_boxes)) for image_boxes in boxes], dtype=torch.float32)
        scales = torch.tensor([[size / image.shape[1], size / image.shape[0]] * 2 for image in images])
        prompts = (prompts * scales[:, None, :]).to(self.device, dtype)  # (B, N, 4) in the model's frame
        outputs = self.segmenter(pixel_values=pixels, input_boxes=prompts, multimask_output=False)
        low_res = outputs.pred_masks[:, :, 0].float()  # (B, N, h, w) logits
        masks = []
        for image, image_boxes, logits in zip(images, boxes, low_res):
            height, width = image.shape[:2]
            union = torch.zeros(height, width, dtype=torch.bool, device=self.device)
            for box, box_logits in zip(image_boxes, logits):
                mask = F.interpolate(box_logits[None, None], size=(height, width), mode="bilinear",
                                     align_corners=False)[0, 0] > 0
                if not mask.any():
                    mask = _box_mask(box, height, width, self.device)  # the box is still evidence
                union |= mask
            masks.append(union.cpu())
        return masks


def _as_image(image):
    image = torch.as_tensor(image)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (H, W, 3) tensors, got {image.dtype} {tuple(image.shape)}")
    return image


def _prompt(concept):
    """Grounding DINO expects lowercase phrases ending with a period."""
    return concept.lower().strip().rstrip(".") + "."


def _clip(box, width, height):
    x0, y0, x1, y1 = box
    return (min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width),
            min(max(y1, 0.0), height))


def _box_mask(box, height, width, device):
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
    mask[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = True
    return mask


def _sam_pixels(image, size):
    """uint8 (H, W, 3) -> (1, 3, size, size) normalised as SAM 2's image processor does."""
    x = image.permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device)[None, :, None, None]
    return (x - mean) / std
