"""`vaerr model init NAME --output URI`, `vaerr model import-authors FILE --output URI` and
`vaerr model info URI`."""

from __future__ import annotations

import argparse
from typing import Any

from jobs.cli_io import add_config_args, config_from_args, print_json_line
from schemas.tables import SYNTHETIC


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `model` command and its `init` / `info` subcommands."""
    p = subparsers.add_parser(
        "model",
        help="Make and inspect SS-VAERR checkpoints.",
        description="Make and inspect SS-VAERR checkpoints. No public SS-VAERR weights exist; "
        "`init` writes an untrained one (flagged so) so the pipeline runs before training.",
    )
    sub = p.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")

    init = sub.add_parser("init", help="Write an untrained checkpoint of a registered arch.")
    init.add_argument("name", metavar="NAME", help="Architecture: ssvaerr_r18 or ssvaerr_tiny.")
    init.add_argument("--output", required=True, metavar="URI", help="Path or fsspec URI.")
    init.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    add_config_args(init)
    init.set_defaults(func=run_init)

    imp = sub.add_parser(
        "import-authors",
        help="Convert a whole model saved by the authors' code (frontend3D.*, gru.fc) into a "
        "vaerr checkpoint (heads must match model.bins).",
    )
    imp.add_argument("source", metavar="FILE", help="Their .pth (path or fsspec URI).")
    imp.add_argument("--output", required=True, metavar="URI", help="vaerr checkpoint to write.")
    add_config_args(imp)
    imp.set_defaults(func=run_import_authors)

    info = sub.add_parser("info", help="Describe a checkpoint (path, URI or registry name).")
    info.add_argument("uri", metavar="URI", help="Checkpoint path, fsspec URI or registry name.")
    add_config_args(info)
    info.set_defaults(func=run_info)


def run_init(args: argparse.Namespace) -> int:
    """Build NAME with random weights and save it flagged untrained."""
    from pipeline.model import init_checkpoint, preprocessing_from_config, save_checkpoint

    cfg = config_from_args(args)
    model_cfg = type(cfg.model).model_validate({**cfg.model.model_dump(), "arch": args.name})
    ckpt = init_checkpoint(model_cfg, preprocessing_from_config(cfg), seed=args.seed)
    save_checkpoint(ckpt, args.output, cfg.storage)
    print_json_line(
        {"uri": args.output, "arch": ckpt.arch, "model_id": ckpt.model_id, "untrained": True}
    )
    return 0


def run_import_authors(args: argparse.Namespace) -> int:
    """Rename their tensors to ours, load strictly, save as a vaerr checkpoint."""
    from pipeline.model import read_weights_file, save_checkpoint
    from pipeline.model.authors import checkpoint_from_authors

    cfg = config_from_args(args)
    state = read_weights_file(args.source, cfg.storage)
    ckpt = checkpoint_from_authors(state, cfg.model, args.source)
    save_checkpoint(ckpt, args.output, cfg.storage)
    print_json_line({"uri": args.output, "arch": ckpt.arch, "model_id": ckpt.model_id})
    return 0


def _lines(title: str, record: dict[str, Any]) -> list[str]:
    return [f"{title}:"] + [f"  {k}: {v}" for k, v in record.items()]


def run_info(args: argparse.Namespace) -> int:
    """Print architecture, parameter count, preprocessing, provenance, the untrained flag and
    what trained it (training_data)."""
    from pipeline.model import load_checkpoint, parameter_count, resolve_checkpoint

    cfg = config_from_args(args)
    uri = resolve_checkpoint(args.uri, cfg.model.registry_file, cfg.cache_dir, cfg.storage)
    ckpt = load_checkpoint(uri, cfg.storage)
    lines = [
        f"checkpoint: {uri}",
        f"arch: {ckpt.arch}",
        f"model_id: {ckpt.model_id}",
        f"parameters: {parameter_count(ckpt.state_dict)}",
        f"bins: {ckpt.bins}",
        f"untrained: {str(ckpt.untrained).lower()}",
        f"training_data: {ckpt.training_data or 'unknown'}",
        f"format_version: {ckpt.version}",
    ]
    lines += _lines("model_config", ckpt.model_config)
    lines += _lines("preprocessing", ckpt.preprocessing)
    lines += _lines("provenance", ckpt.provenance)
    if ckpt.untrained:
        lines.append("WARNING: untrained (random) weights: its arousal/valence are meaningless.")
    if ckpt.training_data == SYNTHETIC:
        lines.append(
            "WARNING: trained on synthetic (rendered) faces only: a demo model, not a measure "
            "of real people's affect."
        )
    print("\n".join(lines), flush=True)
    return 0
