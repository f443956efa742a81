"""The `sigma-fast` command line."""
import argparse
import json
import logging
import os
import sys
import traceback


def add_model_options(parser, prior="none"):
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder or hub id "
                             "(default: $SIGMA_FAST_CHECKPOINT, else the embedded demo model)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16", "fp8"],
                        help="compute dtype (default: bf16 on the GPU, fp32 on the CPU); fp8: bf16 with the "
                             "backbone's GEMMs in FP8 (GPUs of compute capability 8.9+)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="pairs per model call; a last partial batch is padded to it (default 16)")
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="run the model eagerly instead of replaying a captured CUDA graph per batch")
    parser.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the checkpoint's, 0.5)")
    parser.add_argument("--prior", default=prior, choices=["none", "grounded", "auto"],
                        help="spatial prior: flat, grounded with Grounding DINO + SAM 2, or auto: grounded when "
                             "those models load offline (folders, hub cache), else flat with a warning "
                             f"(default {prior})")
    add_grounding_options(parser)


def add_grounding_options(parser):
    parser.add_argument("--detector", default="IDEA-Research/grounding-dino-tiny",
                        help="Grounding DINO hub id or folder (with a grounded prior)")
    parser.add_argument("--segmenter", default="facebook/sam2.1-hiera-tiny",
                        help="SAM 2 hub id or folder (with a grounded prior)")
    parser.add_argument("--grounding-cache", default=None,
                        help="folder caching grounding results by image hash and concept (with a grounded prior)")


def add_parser_options(parser, default="rules"):
    parser.add_argument("--parser", default=default, choices=["rules", "llm"],
                        help="instruction parser: the rules, or a causal LM (parses cached per instruction; when "
                             "the model cannot be loaded, one warning and the rules) "
                             f"(default {default or 'data.parser'})")
    parser.add_argument("--parser-model", default=None, metavar="PATH_OR_ID",
                        help="the LLM parser's model folder or hub id (default Qwen/Qwen2.5-1.5B-Instruct)")


def load_parser_option(args):
    """The parser --parser names; its parses are cached in ~/.cache/sigma_fast/parses."""
    from sigma_fast.annotate import resolve_device
    from sigma_fast.grounding.parsers import load_parser

    return load_parser(getattr(args, "parser", "rules"), getattr(args, "parser_model", None),
                       device=resolve_device(args.device))


def add_run_options(parser):
    parser.add_argument("--workers", type=int, default=4, help="decode threads (default 4)")
    parser.add_argument("--limit", type=int, default=None, help="process only the first N rows")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def shown_path(path):
    """Paths in summaries: relative to the working directory when inside it, else absolute."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path)
    return path if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


def summarize(args, title, fields):
    """How every command ends: `title` and one aligned `name: value` line per field, or with
    --json the fields as one JSON object on one line."""
    if args.json:
        print(json.dumps(fields))
        return
    print(title)
    width = max(map(len, fields)) + 1
    for name, value in fields.items():
        print(f"  {name.replace('_', ' ') + ':':<{width}} {value}")


def load_annotator(args):
    from sigma_fast.annotate import Annotator, resolve_device
    from sigma_fast.errors import check_device

    check_device(args.device)

    grounder = None
    if args.prior == "grounded":
        from sigma_fast.grounding import Grounder

        grounder = Grounder.from_pretrained(detector=args.detector, segmenter=args.segmenter,
                                            device=resolve_device(args.device), cache_dir=args.grounding_cache)
    return Annotator.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype,
                                     batch_size=args.batch_size, threshold=args.threshold, prior=args.prior,
                                     grounder=grounder, cuda_graphs=not args.no_cuda_graphs,
                                     parser=load_parser_option(args),
                                     grounding_options={"detector": args.detector, "segmenter": args.segmenter,
                                                        "cache_dir": args.grounding_cache})


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
    if args.ray is not None:
        return command_annotate_ray(args, corpus)
    devices = None
    if args.devices is not None:
        from sigma_fast.workers import parse_devices

        devices = parse_devices(args.devices)
        args.device = str(devices[0])  # the parent's copy (settings, recipe) lives on the first device
    summary = annotate_corpus(load_annotator(args), corpus, args.out, shard_size=args.shard_size, writer=args.writer,
                              workers=args.workers, negatives=not args.no_negatives, manidataset=args.manidataset,
                              min_score=args.min_score, drop_regenerated=args.drop_regenerated,
                              overwrite=args.overwrite, progress=not args.quiet, devices=devices)
    summarize(args, f"annotated {shown_path(args.out)}", summary.__dict__)
    return 0


def command_annotate_ray(args, corpus):
    if args.devices is not None:
        raise ValueError("--ray places one actor per GPU itself: leave out --devices")
    from functools import partial

    from sigma_fast.errors import require

    ray = require("ray", "ray", "sigma-fast annotate --ray")

    from sigma_fast.ray import annotate_corpus_ray

    ray.init(address=args.ray or None, include_dashboard=False, ignore_reinit_error=True,
             logging_level=logging.INFO if args.verbose else logging.WARNING)
    summary = annotate_corpus_ray(partial(load_annotator, args), corpus, args.out, shard_size=args.shard_size,
                                  writer=args.writer, workers=args.workers, negatives=not args.no_negatives,
                                  manidataset=args.manidataset, min_score=args.min_score,
                                  drop_regenerated=args.drop_regenerated, overwrite=args.overwrite,
                                  progress=not args.quiet)
    summarize(args, f"annotated {shown_path(args.out)}", summary.__dict__)
    return 0


def command_relocate(args):
    from sigma_fast.io.writers.benco import relocate

    entries = relocate(args.out)
    summarize(args, "dataset.json rewritten", {"out": shown_path(args.out), "entries": entries})
    return 0


def command_eval(args):
    from sigma_fast.baselines import build_methods
    from sigma_fast.evaluate import evaluate
    from sigma_fast.io.corpora import open_corpus

    if args.manifest is not None:
        corpus = open_corpus(args.manifest, format="manifest", limit=args.limit)
    else:
        corpus = open_corpus(args.input if len(args.input) > 1 else args.input[0], format=args.format, limit=args.limit)
    dev = open_corpus(args.dev_input, format=args.dev_format) if args.dev_input else None
    if args.prior != "none":
        raise ValueError("eval runs SIGMA's priors as methods: use --methods sigma_grounded instead of --prior")

    def grounder():
        from sigma_fast.annotate import resolve_device
        from sigma_fast.grounding import Grounder

        return Grounder.from_pretrained(detector=args.detector, segmenter=args.segmenter,
                                        device=resolve_device(args.device), cache_dir=args.grounding_cache)

    sigma = load_annotator(args)
    methods = build_methods(args.methods.split(","), sigma, grounder, args.feature_threshold)
    summary = evaluate(methods, corpus, args.out, dev=dev, dev_fraction=args.dev_fraction,
                       jpeg_sweep=args.jpeg_sweep, resize_sweep=args.resize_sweep, gallery=args.gallery,
                       averaging=args.averaging, resize_masks=args.resize_masks, batch_size=args.batch_size,
                       workers=args.workers, device=sigma.device, progress=not args.quiet)  # annotate's decoding
    fields = {}
    for method in summary["methods"]:
        table = summary["tables"][method]["all"]
        fields[method] = table if args.json else "  ".join(
            f"{name} {value:.4f}" if value is not None else f"{name} n/a"
            for name, value in (("F1", table["mean"]["f1"]), ("IoU", table["mean"]["iou"]),
                                ("AUC", table["mean"]["auc"])))
    fields["skipped"] = len(summary["failures"])
    if args.out:
        fields["report"] = shown_path(os.path.join(args.out, "report.html"))
    images = summary["tables"][summary["primary"]]["all"]["images"]
    summarize(args, f"evaluated {images} image(s), mean over images ({summary['averaging']})", fields)
    return 0


def command_train_parsed(args):
    """train's --parser and --parser-model are short for --set data.parser=... and data.parser_model=..."""
    from sigma_fast.train.cli import command_train

    for key, value in (("data.parser", args.parser), ("data.parser_model", args.parser_model)):
        if value is not None:
            args.overrides.append(f"{key}={json.dumps(value)}")  # quoted: a path is read as a string
    return command_train(args)


def command_demo(args):
    from sigma_fast.demo import run_demo

    dataset, page, summary = run_demo(load_annotator(args), args.out, progress=not args.quiet)
    summarize(args, f"demo annotated {summary.annotated} pair(s)", {
        "annotated": summary.annotated, "already_done": summary.skipped_finished, "failed": summary.failed,
        "dataset": shown_path(dataset), "report": shown_path(page)})
    return 0


def command_prior(args):
    from sigma_fast.annotate import resolve_device
    from sigma_fast.errors import check_device
    from sigma_fast.grounding import Grounder
    from sigma_fast.io.corpora import open_corpus
    from sigma_fast.priors import compute_priors

    for name in ("batch_size", "grid"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    corpus = open_corpus(args.input if len(args.input) > 1 else args.input[0], format=args.format, limit=args.limit)
    check_device(args.device)
    grounder = Grounder.from_pretrained(detector=args.detector, segmenter=args.segmenter,
                                        device=resolve_device(args.device), cache_dir=args.grounding_cache,
                                        batch_size=args.batch_size)
    counts = compute_priors(corpus, args.out, grounder, args.grid, batch_size=args.batch_size,
                            parser=load_parser_option(args), progress=not args.quiet)
    summarize(args, f"priors in {shown_path(args.out)}", {**counts, "out": shown_path(args.out)})
    return 0


def command_synth(args):
    from sigma_fast.errors import require

    for module in ("cv2", "scipy"):
        require(module, "synth", "sigma-fast synth")
    from sigma_fast.data.synth import SynthConfig, generate_dataset

    if args.pairs < 1:
        raise ValueError(f"--pairs must be at least 1, got {args.pairs}")
    config = SynthConfig(image_size=args.size, autoencoder=args.autoencoder)
    manifest = generate_dataset(args.out, args.pairs, args.seed, config, progress=not args.quiet)
    summarize(args, f"wrote {args.pairs} synthetic pair(s)", {"pairs": args.pairs, "manifest": shown_path(manifest)})
    return 0


EXAMPLES = {
    "annotate": "sigma-fast annotate --manifest pairs.jsonl --out annotated",
    "relocate": "sigma-fast relocate /new/place/annotated",
    "eval": "sigma-fast eval --manifest data/val/manifest.jsonl --checkpoint runs/quickstart_stage2/final --out eval",
    "demo": "sigma-fast demo --out sigma_fast_demo",
    "train": "sigma-fast train --stage 1 --config configs/quickstart_stage1.yaml",
    "synth": "sigma-fast synth --out data/train --pairs 64",
    "prior": "sigma-fast prior --format magicbrush --input data/magicbrush --out priors/magicbrush --grid 37",
}


def add_common_options(parser, default):
    """--debug and --json, accepted before and after the subcommand (`default` SUPPRESS in the
    subcommands, so that they do not reset a value given before it)."""
    parser.add_argument("--debug", action="store_true", default=default,
                        help="on an error, show the traceback instead of one line")
    parser.add_argument("--json", action="store_true", default=default,
                        help="end with the summary as one JSON object instead of text")


def build_parser():
    import sigma_fast
    from sigma_fast.io.corpora import BENCHMARK_FORMATS, FORMATS

    parser = argparse.ArgumentParser(prog="sigma-fast", description="SIGMA edit-mask annotation, fast.")
    parser.add_argument("--version", action="version", version=f"sigma-fast {sigma_fast.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    add_common_options(parser, False)
    commands = parser.add_subparsers(dest="command", required=True)

    annotate = commands.add_parser("annotate",
                                   help="annotate a corpus of edit pairs into IMDL-BenCo / webdataset shards")
    source = annotate.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH_OR_GLOB",
                        help="corpus files, globs, folders or fsspec URLs (read in sorted order)")
    source.add_argument("--manifest", help="short for --format manifest --input MANIFEST (JSONL or CSV with "
                                           "original, edited, instruction[, mask][, key])")
    annotate.add_argument("--format", default=None, choices=FORMATS,
                          help="corpus schema (default: detected from the file suffix or parquet columns)")
    annotate.add_argument("--out", required=True, help="output folder (re-running with the same settings resumes it)")
    add_model_options(annotate, prior="auto")
    add_parser_options(annotate)
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
    annotate.add_argument("--devices", default=None, metavar="all|0,1,...",
                          help="one worker process per device, same output as one device: 'all' GPUs, GPU indices, "
                               "or 'cpu,cpu' (CPU workers, for testing or a many-core CPU machine)")
    annotate.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                          help="run on a Ray cluster, one actor per GPU (extra sigma_fast[ray]): ADDRESS as for "
                               "ray.init ('auto' joins this node's cluster); without it RAY_ADDRESS or a local "
                               "cluster; OUT must be on storage every node sees")
    annotate.set_defaults(run=command_annotate)

    relocate = commands.add_parser("relocate", help="rewrite OUT/dataset.json's absolute paths after OUT was moved")
    relocate.add_argument("out", metavar="OUT", help="an annotate output folder, at its new place")
    relocate.set_defaults(run=command_relocate)

    evaluate = commands.add_parser("eval", help="pixel F1/IoU/AUC of SIGMA and baselines against ground-truth masks")
    eval_source = evaluate.add_mutually_exclusive_group(required=True)
    eval_source.add_argument("--input", nargs="+", metavar="PATH_OR_GLOB", help="corpus or benchmark with masks")
    eval_source.add_argument("--manifest",
                             help="short for --format manifest --input MANIFEST (rows with a mask column)")
    evaluate.add_argument("--format", default=None, choices=FORMATS + BENCHMARK_FORMATS,
                          help="the input's schema (default: detected; benchmark layouts are named, never detected)")
    evaluate.add_argument("--out", default=None,
                          help="folder for eval_summary.json, eval_pairs.jsonl and report.html")
    evaluate.add_argument("--methods", default="sigma",
                          help="comma-separated, first = the gallery's ranking: sigma (flat prior), sigma_grounded, "
                               "pixel, feature, grounding (default sigma)")
    evaluate.add_argument("--jpeg-sweep", action="store_true",
                          help="also score with the edited image re-encoded as JPEG at quality 100..50")
    evaluate.add_argument("--resize-sweep", action="store_true",
                          help="also score with the edited image resized by 0.75 and 0.5, then JPEG at each quality")
    evaluate.add_argument("--gallery", type=int, default=6,
                          help="best and worst N pairs shown in the report (default 6)")
    evaluate.add_argument("--dev-input", default=None,
                          help="dev split calibrating the feature baseline's threshold (default: a held-out "
                               "--dev-fraction of the input, left out of every table)")
    evaluate.add_argument("--dev-format", default=None, choices=FORMATS + BENCHMARK_FORMATS,
                          help="--dev-input's schema (default: detected)")
    evaluate.add_argument("--dev-fraction", type=float, default=0.2,
                          help="share of the input held out for calibration without --dev-input (default 0.2)")
    evaluate.add_argument("--feature-threshold", type=float, default=None,
                          help="fix the feature baseline's threshold instead of calibrating it")
    evaluate.add_argument("--averaging", default="skip_empty", choices=["skip_empty", "benco"],
                          help="skip_empty: images with an empty ground truth are left out (default); benco: "
                               "IMDL-BenCo's, they count with scores 0")
    evaluate.add_argument("--resize-masks", action="store_true",
                          help="resize a mask of another size than its edited image (default: skip the pair)")
    add_model_options(evaluate)
    add_parser_options(evaluate)
    add_run_options(evaluate)
    evaluate.set_defaults(run=command_eval)

    demo = commands.add_parser("demo", help="annotate the embedded sample pairs and write report.html")
    demo.add_argument("--out", default="sigma_fast_demo", help="output folder (default ./sigma_fast_demo)")
    add_model_options(demo)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=command_demo)

    from sigma_fast.train.cli import add_train_arguments

    train = commands.add_parser("train", help="train the SIGMA head (Stage I or II; torchrun for several GPUs)")
    add_train_arguments(train)
    add_parser_options(train, default=None)  # None: the config's data.parser
    train.set_defaults(run=command_train_parsed)

    synth = commands.add_parser(
        "synth", help="write N synthetic edit pairs with exact masks and a manifest (offline training data)")
    synth.add_argument("--out", required=True, help="output folder: original/, edited/, mask/, manifest.jsonl")
    synth.add_argument("--pairs", type=int, required=True, help="number of pairs")
    synth.add_argument("--seed", type=int, default=0, help="the same seed gives the same pairs (default 0)")
    synth.add_argument("--size", type=int, default=128,
                       help="image side in pixels, a multiple of 8 >= 64 (default 128)")
    synth.add_argument("--autoencoder", action="store_true",
                       help="include a learned autoencoder round trip among the editor-like perturbations "
                            "(trains a small model on first use: minutes on a CPU; cached)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(run=command_synth)

    prior = commands.add_parser(
        "prior", help="precompute the grounded spatial priors of a corpus for training (data.priors)")
    prior.add_argument("--input", nargs="+", required=True, metavar="PATH_OR_GLOB",
                       help="corpus files, globs, folders or fsspec URLs (read in sorted order)")
    prior.add_argument("--format", default=None, choices=FORMATS,
                       help="corpus schema (default: detected from the file suffix or parquet columns)")
    prior.add_argument("--out", required=True,
                       help="prior store folder (re-running resumes it: pairs already there are skipped)")
    prior.add_argument("--grid", type=int, default=37,
                       help="prior side in patches: the model's image_size / 14 (default 37, for 518)")
    add_grounding_options(prior)
    prior.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    prior.add_argument("--batch-size", type=int, default=8, help="pairs per grounding call (default 8)")
    add_parser_options(prior)
    prior.add_argument("--limit", type=int, default=None, help="process only the first N rows")
    prior.add_argument("--quiet", action="store_true", help="no progress bar")
    prior.set_defaults(run=command_prior)

    for name, subparser in commands.choices.items():
        add_common_options(subparser, argparse.SUPPRESS)
        subparser.epilog = "example:\n  " + EXAMPLES[name]
        subparser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def check_out(args):
    """An output folder that is a file: one line before any work."""
    out = getattr(args, "out", None)
    if out and os.path.isfile(out):
        raise NotADirectoryError(f"output folder {out!r} is a file")


def main(argv=None):
    """Runs one command. A user error (see `sigma_fast.errors.user_errors`) is one line on stderr
    and exit status 2; --debug adds its traceback. Anything else is a bug: its traceback shows."""
    from sigma_fast.errors import user_errors

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        check_out(args)
        return args.run(args)
    except user_errors() as error:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(error).split())  # one line, whatever the message held
        print(f"sigma-fast: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
