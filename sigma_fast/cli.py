"""The `sigma-fast` command line."""
import argparse
import json
import logging
import os
import sys


def add_model_options(parser):
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder or hub id (default: $SIGMA_FAST_CHECKPOINT, else the embedded demo model)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16", "fp8"],
                        help="compute dtype (default: bf16 on the GPU, fp32 on the CPU); fp8: bf16 with the "
                             "backbone's GEMMs in FP8 (GPUs of compute capability 8.9+)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="pairs per model call; a last partial batch is padded to it (default 16)")
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="run the model eagerly instead of replaying a captured CUDA graph per batch")
    parser.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the checkpoint's, 0.5)")
    parser.add_argument("--prior", default="none", choices=["none", "grounded"],
                        help="spatial prior: flat, or grounded with Grounding DINO + SAM 2 (default none)")
    parser.add_argument("--detector", default="IDEA-Research/grounding-dino-tiny",
                        help="Grounding DINO hub id or folder (with --prior grounded)")
    parser.add_argument("--segmenter", default="facebook/sam2.1-hiera-tiny",
                        help="SAM 2 hub id or folder (with --prior grounded)")
    parser.add_argument("--grounding-cache", default=None,
                        help="folder caching grounding results by image hash and concept (with --prior grounded)")


def add_run_options(parser):
    parser.add_argument("--workers", type=int, default=4, help="decode threads (default 4)")
    parser.add_argument("--limit", type=int, default=None, help="process only the first N rows")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def load_annotator(args):
    from sigma_fast.annotate import Annotator, resolve_device

    grounder = None
    if args.prior == "grounded":
        from sigma_fast.grounding import Grounder

        grounder = Grounder.from_pretrained(detector=args.detector, segmenter=args.segmenter,
                                            device=resolve_device(args.device), cache_dir=args.grounding_cache)
    return Annotator.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype,
                                     batch_size=args.batch_size, threshold=args.threshold, prior=args.prior,
                                     grounder=grounder, cuda_graphs=not args.no_cuda_graphs)


def command_annotate(args):
    from sigma_fast.io.corpora import open_corpus
    from sigma_fast.pipeline import annotate_corpus

    if args.shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {args.shard_size}")
    if args.manifest is not None:
        corpus = open_corpus(args.manifest, format="manifest", limit=args.limit)
    else:
        corpus = open_corpus(args.input if len(args.input) > 1 else args.input[0], format=args.format, limit=args.limit)
    # the input is checked above, before the model loads
    summary = annotate_corpus(load_annotator(args), corpus, args.out, shard_size=args.shard_size, writer=args.writer,
                              workers=args.workers, negatives=not args.no_negatives, manidataset=args.manidataset,
                              min_score=args.min_score, drop_regenerated=args.drop_regenerated,
                              overwrite=args.overwrite, progress=not args.quiet)
    print(json.dumps(summary.__dict__))
    return 0


def command_relocate(args):
    from sigma_fast.io.writers.benco import relocate

    entries = relocate(args.out)
    print(f"dataset.json rewritten for {os.path.abspath(args.out)} ({entries} entries)")
    return 0


def command_eval(args):
    from sigma_fast.evaluate import evaluate_manifest

    summary = evaluate_manifest(load_annotator(args), args.manifest, batch_size=args.batch_size, workers=args.workers,
                                out_dir=args.out, limit=args.limit, progress=not args.quiet)
    print(json.dumps({name: summary[name] for name in ("all", "local", "regenerated")}, indent=2))
    if summary["failures"]:
        print(f"{len(summary['failures'])} pair(s) skipped; see eval_summary.json", file=sys.stderr)
    return 0


def command_demo(args):
    from sigma_fast.demo import run_demo

    dataset, page, summary = run_demo(load_annotator(args), args.out, progress=not args.quiet)
    print(f"annotated {summary.annotated} pair(s) ({summary.skipped_finished} already done, {summary.failed} failed)")
    print(f"IMDL-BenCo dataset: {dataset}")
    print(f"report:             {page}")
    return 0


def build_parser():
    from sigma_fast.io.corpora import FORMATS

    parser = argparse.ArgumentParser(prog="sigma-fast", description="SIGMA edit-mask annotation, fast.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    annotate = commands.add_parser("annotate", help="annotate a corpus of edit pairs into IMDL-BenCo / webdataset shards")
    source = annotate.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH_OR_GLOB",
                        help="corpus files, globs, folders or fsspec URLs (read in sorted order)")
    source.add_argument("--manifest", help="short for --format manifest --input MANIFEST (JSONL or CSV with "
                                           "original, edited, instruction[, mask][, key])")
    annotate.add_argument("--format", default=None, choices=FORMATS,
                          help="corpus schema (default: detected from the file suffix or parquet columns)")
    annotate.add_argument("--out", required=True, help="output folder (re-running with the same settings resumes it)")
    add_model_options(annotate)
    add_run_options(annotate)
    annotate.add_argument("--shard-size", type=int, default=1000, help="rows per output shard (default 1000)")
    annotate.add_argument("--writer", default="benco", choices=["benco", "webdataset", "both"],
                          help="IMDL-BenCo files + dataset.json, webdataset tar shards, or both (default benco)")
    annotate.add_argument("--manidataset", action="store_true",
                          help="also lay the dataset out for IMDL-BenCo's ManiDataset (OUT/benco/Tp + OUT/benco/Gt)")
    annotate.add_argument("--min-score", type=float, default=None, help="leave out pairs whose score is below S")
    annotate.add_argument("--drop-regenerated", action="store_true",
                          help="leave out pairs whose whole image changed (see README, quality)")
    annotate.add_argument("--overwrite", action="store_true",
                          help="start over in OUT instead of resuming (needed when the settings changed)")
    annotate.add_argument("--no-negatives", action="store_true",
                          help="do not list the original images as authentic ('Negative') samples")
    annotate.set_defaults(run=command_annotate)

    relocate = commands.add_parser("relocate", help="rewrite OUT/dataset.json's absolute paths after OUT was moved")
    relocate.add_argument("out", metavar="OUT", help="an annotate output folder, at its new place")
    relocate.set_defaults(run=command_relocate)

    evaluate = commands.add_parser("eval", help="pixel F1/IoU/AUC against the manifest's ground-truth masks")
    evaluate.add_argument("--manifest", required=True, help="JSONL or CSV whose rows have a mask column")
    evaluate.add_argument("--out", default=None, help="folder for eval_summary.json and eval_pairs.jsonl")
    add_model_options(evaluate)
    add_run_options(evaluate)
    evaluate.set_defaults(run=command_eval)

    demo = commands.add_parser("demo", help="annotate the embedded sample pairs and write report.html")
    demo.add_argument("--out", default="sigma_fast_demo", help="output folder (default ./sigma_fast_demo)")
    add_model_options(demo)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=command_demo)

    from sigma_fast.train.cli import add_train_arguments, command_train

    train = commands.add_parser("train", help="train the SIGMA head (Stage I or II; torchrun for several GPUs)")
    add_train_arguments(train)
    train.set_defaults(run=command_train)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"sigma-fast: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
