"""`sigma-fast train`: the command line of the training loop (also under torchrun)."""
import os
import sys

import yaml


def add_train_arguments(parser):
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True,
                        help="1: supervised on edit masks; 2: VAE calibration / EMA self-training / disentanglement")
    parser.add_argument("--config", required=True, help="training YAML (see configs/stage1.yaml, configs/stage2.yaml)")
    parser.add_argument("--init", default=None, help="checkpoint folder to start from (required for --stage 2)")
    parser.add_argument("--resume", default=None,
                        help="continue exactly from a checkpoint: a step folder or a run folder (its latest)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-4 (value parsed as YAML; repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_overrides(items):
    overrides = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def command_train(args):
    from sigma_fast.train import NonFiniteLossError, load_train_config, train

    config = load_train_config(args.config, stage=args.stage, overrides=parse_overrides(args.overrides),
                               init=args.init)
    if config.device != "auto":
        from sigma_fast.errors import check_device

        check_device(config.device)
    if os.path.isfile(config.output_dir):
        raise NotADirectoryError(f"output_dir {config.output_dir!r} is a file")
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, only rank 0 reports
    try:
        result = train(config, resume=args.resume, progress=not args.quiet)
    except NonFiniteLossError as error:
        if main_process:
            print(f"sigma-fast train: {error}", file=sys.stderr)
        return 3
    if main_process:
        from sigma_fast.cli import shown_path, summarize

        fields = {"step": result["step"], "final_loss": result["losses"][-1] if result["losses"] else None,
                  "skipped": result["skipped"], "model": shown_path(os.path.join(config.output_dir, "final")),
                  "resume_from": shown_path(result["checkpoint"])}
        if result["val"]:
            fields["val"] = result["val"] if args.json else ", ".join(
                f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
                for name, value in result["val"].items())
        summarize(args, f"Stage {config.stage} trained", fields)
    return 0
