"""Several devices on one node: one spawned worker process per device, sharing one corpus run.

The parent prepares OUT (settings, refusal, resume) and merges the shards at the end exactly as a
single-process run does; each worker rebuilds the annotator on its device (`AnnotatorRecipe`),
claims shard numbers from a shared counter (so a slow device takes fewer shards), and annotates and
commits each claimed shard with the same stages and shard protocol (`sigma_fast.pipeline`). A
shard's bytes do not depend on which worker wrote it, so the output equals one device's.
`cpu,cpu` runs two CPU workers: a testing option (and a way to use more cores of a CPU machine).
"""
import logging
import multiprocessing
import os
import queue
import traceback

import torch

log = logging.getLogger(__name__)


def parse_devices(spec):
    """"all" (every visible GPU), "0,1" (GPU indices), "cuda:0,cuda:1", "cpu,cpu" (two CPU workers),
    or a list of such items -> [torch.device]. ValueError for an unknown or absent device."""
    if isinstance(spec, str):
        if spec.strip() == "all":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ValueError("--devices all: torch sees no GPU (use --devices cpu for the CPU)")
            return [torch.device("cuda", index) for index in range(count)]
        spec = [item.strip() for item in spec.split(",")]
    if isinstance(spec, (int, torch.device)):
        spec = [spec]
    devices = []
    for item in spec:
        try:
            device = torch.device("cuda", int(item)) if str(item).isdigit() else torch.device(item)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"unknown device {item!r} in devices ({error})") from None
        if device.type == "cuda":
            device = torch.device("cuda", device.index or 0)
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if device.index >= count:
                raise ValueError(f"device {device} is not there: torch sees {count} GPU(s)")
        elif device.type != "cpu":
            raise ValueError(f"devices must be GPUs or cpu, got {item!r}")
        devices.append(device)
    if not devices:
        raise ValueError("devices is empty")
    return devices


class AnnotatorRecipe:
    """What rebuilds an Annotator on another device, picklable: the checkpoint's config and head
    weights (on the CPU) and the Annotator's settings, its grounding options included (so that
    prior="auto" looks for the same detector and segmenter). The frozen encoders load from the paths
    the config names, and FP8 quantizes again there, so the copy computes what the original does."""

    def __init__(self, annotator):
        if annotator.prior_mode == "grounded":
            raise ValueError("several devices with prior='grounded' are not supported yet: run one process per "
                             "device, or annotate with prior='none'")
        self.config = annotator.model.config
        self.head = {name: tensor.detach().cpu() for name, tensor in annotator.model.head_state_dict().items()}
        self.options = {"dtype": annotator.precision, "batch_size": annotator.batch_size,
                        "threshold": annotator.threshold, "parser": annotator.parser, "prior": annotator.prior_mode,
                        "grounding_options": annotator.grounding_options,
                        # the parent's choice where it runs on a GPU; graphs by default otherwise
                        "cuda_graphs": annotator.cuda_graphs or annotator.device.type != "cuda"}

    def __call__(self, device):
        from sigma_fast.annotate import Annotator
        from sigma_fast.model import SigmaModel

        model = SigmaModel.from_config(self.config)
        model.load_head_state_dict(self.head)
        return Annotator(model, device=device, **self.options)


def claimed(counter):
    """Shard numbers taken from the counter shared by the workers, one at a time, increasing."""
    while True:
        with counter.get_lock():
            shard = counter.value
            counter.value += 1
        yield shard


def worker_main(rank, device, recipe, corpus_args, out_dir, plan, options, workers, counter, events, threads):
    """One worker process: annotate the shards it claims; report rows, then ("done", counts) or ("error", text)."""
    try:
        from sigma_fast.io.corpora import Corpus
        from sigma_fast.pipeline import run_shards

        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(threads)  # the CPU workers share the cores
        annotator = recipe(device)
        counts = run_shards(annotator, Corpus(*corpus_args), out_dir, plan, claimed(counter), options, workers,
                            lambda rows: events.put(("rows", rank, rows)))
        events.put(("done", rank, counts))
    except BaseException:
        events.put(("error", rank, traceback.format_exc()))


def run_on_devices(recipe, corpus, out_dir, plan, options, workers, devices, progress):
    """Annotate the shards `plan` leaves to do with one worker process per device (spawned), each
    building its annotator with `recipe(device)` (an AnnotatorRecipe, or any picklable callable);
    -> the summed ShardCounts (`end`: where the corpus ended). Raises RuntimeError if a worker fails."""
    from sigma_fast.pipeline import ShardCounts

    context = multiprocessing.get_context("spawn")
    counter, events = context.Value("q", 0), context.Queue()
    threads = max(1, (os.cpu_count() or 1) // max(1, sum(device.type == "cpu" for device in devices)))
    arguments = (recipe, (corpus.format, corpus.sources, corpus.limit), out_dir, plan, options,
                 workers, counter, events, threads)
    processes = [context.Process(target=worker_main, args=(rank, device, *arguments), daemon=True,
                                 name=f"sigma-worker-{rank}") for rank, device in enumerate(devices)]
    for process in processes:
        process.start()
    finished = {}
    try:
        while len(finished) < len(processes):
            try:
                kind, rank, value = events.get(timeout=1.0)
            except queue.Empty:
                for rank, process in enumerate(processes):
                    if rank not in finished and process.exitcode is not None:
                        raise RuntimeError(f"the worker on {devices[rank]} exited with status {process.exitcode}")
                continue
            if kind == "rows":
                progress(value)
            elif kind == "done":
                finished[rank] = value
            else:
                log.error("worker on %s failed:\n%s", devices[rank], value)
                raise RuntimeError(f"the worker on {devices[rank]} failed: {value.strip().splitlines()[-1]}")
    finally:
        for process in processes:
            if process.exitcode is None and len(finished) < len(processes):
                process.terminate()
            process.join()
    parts = finished.values()
    return ShardCounts(annotated=sum(part.annotated for part in parts), failed=sum(part.failed for part in parts),
                       skipped=sum(part.skipped for part in parts), end=min(part.end for part in parts))
