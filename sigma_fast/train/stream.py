"""A deterministic, resumable stream of training batches.

Every sample has a global *position* in an endless sequence of epochs. Epoch e visits the blocks
(parquet row groups) in a seeded permutation, groups them into windows of `shuffle_blocks`, and
shuffles the rows inside each window: a streaming shuffle that reads each row group whole.
Global batch j is positions [j * G, (j + 1) * G); DDP rank r takes its slice
[j * G + r * b, j * G + (r + 1) * b) with b = G / world. So the samples of a step depend on neither
the number of processes nor the number of DataLoader workers, and resuming at batch j needs only j.

DataLoader workers yield whole batches round-robin: worker w of a loader started at batch s makes
batches s + w, s + w + W, ..., which the DataLoader hands out in order s, s + 1, ...
Per-sample randomness (negatives, re-encode quality, prior dropout) comes from generators seeded by
(seed, stream, position), never from global RNG state.

With a prior store, each sample's (g, g) prior is read by its row key (a key not in the store gets
the flat prior); with `prior_dropout` p, a share p of the samples (drawn per position) gets the flat
prior instead, so one model learns to work with and without a prior.
"""

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sigma_fast.train.data import NegativeSettings, SampleError, decode_sample

TRAIN_STREAM, UNLABELLED_STREAM, CALIBRATION_STREAM, VAL_STREAM = 0, 1, 2, 3
PRIOR_DROPOUT_DRAW = 1  # the prior-dropout generator's extra seed word: independent of the sample's own draws


class SampleOrder:
    """Global position -> (source index, block index, row index)."""

    def __init__(self, sources, seed, shuffle, window_blocks):
        self.blocks = [(s, b, rows) for s, source in enumerate(sources) for b, rows in enumerate(source.block_sizes())]
        self.sizes = np.array([rows for _, _, rows in self.blocks], dtype=np.int64)
        self.total = int(self.sizes.sum())
        if self.total == 0:
            raise ValueError("the data sources have no rows")
        self.seed, self.shuffle, self.window_blocks = seed, shuffle, window_blocks
        self._layouts, self._windows = {}, {}  # small caches (plain dicts: the order is pickled to workers)

    def _epoch_layout(self, epoch):
        if epoch not in self._layouts:
            self._layouts = {epoch: self._layout(epoch)}
        return self._layouts[epoch]

    def _window_rows(self, epoch, window):
        if (epoch, window) not in self._windows:
            if len(self._windows) >= 4:
                self._windows.pop(next(iter(self._windows)))
            self._windows[epoch, window] = self._rows_of_window(epoch, window)
        return self._windows[epoch, window]

    def _layout(self, epoch):
        # -> block order, and per window: first block index into the order, first position
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
        else:
            order = np.arange(len(self.blocks))
        window_first_block = np.arange(0, len(order), self.window_blocks if self.shuffle else len(order))
        sizes = self.sizes[order]
        starts = np.concatenate([[0], np.cumsum(sizes)])[window_first_block]
        return order, window_first_block, starts

    def _rows_of_window(self, epoch, window):
        # -> (block ids, row ids) of the window's rows in their shuffled order
        order, first, _ = self._epoch_layout(epoch)
        end = first[window + 1] if window + 1 < len(first) else len(order)
        block_ids = order[first[window]:end]
        blocks = np.concatenate([np.full(self.sizes[b], b) for b in block_ids])
        rows = np.concatenate([np.arange(self.sizes[b]) for b in block_ids])
        if self.shuffle:
            permutation = np.random.default_rng([self.seed, epoch, window]).permutation(len(rows))
            blocks, rows = blocks[permutation], rows[permutation]
        return blocks, rows

    def locate(self, position):
        epoch, offset = divmod(position, self.total)
        _, _, starts = self._epoch_layout(epoch)
        window = int(np.searchsorted(starts, offset, side="right")) - 1
        blocks, rows = self._window_rows(epoch, window)
        block = int(blocks[offset - starts[window]])
        source, source_block, _ = self.blocks[block]
        return source, source_block, int(rows[offset - starts[window]])


class PairStream(IterableDataset):
    """Yields batches: dict(original, edited uint8 (b, S, S, 3), mask float (b, S, S) when labelled,
    instruction, edit (parsed EditTuples), kind, failures, batch index; with `priors` (a PriorStore)
    also prior float (b, g, g) and prior_flat (b bools)). Corrupt rows are left out of their batch and
    reported in `failures`; a batch may therefore be smaller, even empty.

    `finite`: one ordered pass over the data (validation); otherwise endless and shuffled.
    """

    def __init__(self, sources, image_size, global_batch, rank, world, seed, stream, labelled,
                 negatives: NegativeSettings = None, start_batch=0, finite=False, window_blocks=4,
                 priors=None, prior_dropout=0.0):
        if global_batch % world:
            raise ValueError(f"the global batch size {global_batch} does not split over {world} processes")
        self.sources = sources
        self.order = SampleOrder(sources, seed, not finite, window_blocks)
        self.image_size, self.global_batch, self.rank = image_size, global_batch, rank
        self.batch_size = global_batch // world
        self.seed, self.stream, self.labelled = seed, stream, labelled
        self.negatives = negatives if labelled else None
        self.start_batch, self.finite = start_batch, finite
        self.priors, self.prior_dropout = priors, prior_dropout

    def sample(self, position):
        from sigma_fast.grounding import parse_instruction

        source, block, index = self.order.locate(position)
        row = self.sources[source].row(block, index)
        rng = np.random.default_rng([self.seed, self.stream, position])
        try:
            sample = decode_sample(row, self.image_size, self.labelled, rng, self.negatives)
        except SampleError as error:
            return None, f"{row.key}: {error}"
        sample["instruction"] = row.instruction or ""
        sample["edit"] = parse_instruction(sample["instruction"])
        if self.priors is not None:
            sample["prior"], sample["prior_flat"] = self.priors.get(row.key)
            dropped = np.random.default_rng([self.seed, self.stream, position, PRIOR_DROPOUT_DRAW]).random()
            if dropped < self.prior_dropout:
                sample["prior"], sample["prior_flat"] = torch.ones_like(sample["prior"]), True
        return sample, None

    def make_batch(self, batch_index):
        first = batch_index * self.global_batch + self.rank * self.batch_size
        last = first + self.batch_size
        if self.finite:
            last = min(last, self.order.total)
        samples, failures = [], []
        for position in range(first, last):
            sample, failure = self.sample(position)
            if failure:
                failures.append(failure)
            else:
                samples.append(sample)
        size = self.image_size
        batch = {
            "original": torch.stack([s["original"] for s in samples]) if samples else torch.zeros(0, size, size, 3, dtype=torch.uint8),
            "edited": torch.stack([s["edited"] for s in samples]) if samples else torch.zeros(0, size, size, 3, dtype=torch.uint8),
            "instruction": [s["instruction"] for s in samples],
            "edit": [s["edit"] for s in samples],
            "kind": [s["kind"] for s in samples],
            "failures": failures,
            "index": batch_index,
        }
        if self.priors is not None:
            grid = self.priors.grid
            batch["prior"] = torch.stack([s["prior"] for s in samples]) if samples else torch.zeros(0, grid, grid)
            batch["prior_flat"] = [s["prior_flat"] for s in samples]
        if self.labelled:
            batch["mask"] = torch.stack([s["mask"] for s in samples]) if samples else torch.zeros(0, size, size)
        return batch

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batch_index = self.start_batch + worker
        while not self.finite or batch_index * self.global_batch < self.order.total:
            yield self.make_batch(batch_index)
            batch_index += workers


def make_loader(stream: PairStream, workers, pin_memory):
    """Batches are made inside the workers (batch_size=None); pinned for asynchronous copies."""
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0 and not stream.finite,
                      prefetch_factor=4 if workers > 0 else None)
