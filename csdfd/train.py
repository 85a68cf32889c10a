"""``python -m csdfd.train``: train a CS-DFD detector (paper Algorithm 1) and test it.

    python -m csdfd.train --fused                      # embedded synthetic benchmark, CS-DFD
    python -m csdfd.train --mode OS --out runs/os      # a baseline strategy
    python -m csdfd.train --config my.yaml --epochs 4  # YAML, then flags
    python -m csdfd.train --out runs/os --resume       # continue runs/os/last.pt
    torchrun --nproc_per_node 2 -m csdfd.train         # data parallel (csdfd.distributed)

Every Config field is a flag (``--batch-size 32``, ``--amp/--no-amp``); ``--help`` lists them with
their defaults. The run directory gets config.yaml, metrics.jsonl, curves.png, last.pt, best.pt,
results.json and results.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

from .config import SYNTHETIC_PRESET, Config, coerce, load_yaml, resolve, unknown_hint

#: Fields that may change on --resume without breaking bit-exact continuation.
RESUME_SAFE = {"log_every", "tensorboard", "workers", "eval_batch_size", "dist_timeout"}


def _flag_type(name: str):
    """argparse ``type=`` for Config field ``name``: the same typing as YAML values."""

    def parse(text: str):
        try:
            return coerce(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose "unrecognized arguments" error suggests the closest flag."""

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's own
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            flags = [s for a in self._actions for s in a.option_strings]
            hints = [unknown_hint(e.split("=")[0], flags) for e in extras if e.startswith("--")]
            self.error(f"unrecognized arguments: {' '.join(extras)}"
                       + "".join(f"; {h}" for h in hints if "did you mean" in h))
        return namespace


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field; defaults are SUPPRESSed so only explicit flags override."""
    group = parser.add_argument_group("configuration (Config fields; YAML keys use _ names)")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        shown = f"default: {default}"
        if f.name in SYNTHETIC_PRESET:
            shown += f"; synthetic data: {SYNTHETIC_PRESET[f.name]}"
        text = f"{f.metadata['help']} ({shown})"
        if f.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
            continue
        if f.type == "list[str]":  # repeatable: --test A --test B
            group.add_argument(flag, action="append", default=argparse.SUPPRESS,
                               help=f"{f.metadata['help']} (default: none)",
                               metavar=f.name.upper())
            continue
        group.add_argument(flag, type=_flag_type(f.name), default=argparse.SUPPRESS, help=text,
                           metavar=f.name.upper())


def build_parser(prog: str = "python -m csdfd.train",
                 single_run: bool = True) -> argparse.ArgumentParser:
    """The train command line; ``single_run=False`` (csdfd.study) leaves --resume and
    --stop-after out of ``--help``: they are parsed only to be refused with a pointer."""
    hidden = (lambda text: text) if single_run else (lambda _text: argparse.SUPPRESS)
    parser = _Parser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a deepfake detector with CS-DFD (UVS + CGR) or a baseline strategy,\n"
                    "and test it on the in-domain and cross-domain sets.",
        epilog="examples:\n"
               "  python -m csdfd.train --fused                  # synthetic benchmark, CS-DFD\n"
               "  python -m csdfd.train --mode OS --out runs/os  # plain L1 + L2 baseline\n"
               "  python -m csdfd.train --out runs/os --resume   # continue runs/os/last.pt\n"
               "  python -m csdfd.train --config run.yaml --epochs 4   # YAML, then flags\n"
               "order: defaults (paper), synthetic preset (synthetic data only), --config, flags;\n"
               "the resolved config is saved as OUT/config.yaml")
    run = parser.add_argument_group("run")
    run.add_argument("--config", metavar="FILE.yaml", default=None,
                     help="YAML file of Config fields (the keys of OUT/config.yaml), applied "
                          "before the flags")
    run.add_argument("--fused", action="store_true",
                     help="use the fastest available gradient-op backend (backend=auto) and "
                          "print which")
    run.add_argument("--out", metavar="DIR", default=None,
                     help="run directory (default: runs/<date-time>-<mode>)")
    run.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                     help=hidden("continue a run: CKPT, or OUT/last.pt when given without a "
                                 "value"))
    run.add_argument("--stop-after", type=int, default=None, metavar="N",
                     help=hidden("stop after epoch N, saving last.pt (continue with --resume)"))
    run.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    add_config_flags(parser)
    return parser


def overrides_from(args: argparse.Namespace) -> dict:
    """YAML values updated by explicit flags (and --fused)."""
    values = load_yaml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__}
    if args.fused:
        if "backend" in flags:
            raise ValueError("--fused means backend=auto; drop --fused or --backend")
        flags["backend"] = "auto"
    return {**values, **flags}


class AlreadyFinished(Exception):
    """``--resume`` of a run that has trained all its epochs and written its results."""


def resolve_run(args: argparse.Namespace) -> tuple[Config, Path, Path | None]:
    """(config, run dir, checkpoint to resume or None) from the parsed arguments.

    Raises AlreadyFinished when ``--resume`` names a finished run and ``--epochs`` does not
    ask for more: nothing is read beyond the checkpoint, nothing is written.
    """
    from .checkpoint import config_of, load_checkpoint

    overrides = overrides_from(args)
    if args.resume is None:
        cfg = resolve(overrides)
        out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.mode}")
        if (out / "last.pt").exists():
            raise FileExistsError(f"{out} already holds a run (last.pt); pass --resume to "
                                  "continue it, or choose another --out")
        return cfg, out, None
    if args.resume == "last":
        if not args.out:
            raise ValueError("--resume without a checkpoint path needs --out DIR")
        ckpt = Path(args.out) / "last.pt"
    else:
        ckpt = Path(args.resume)
    state = load_checkpoint(ckpt)
    stored = config_of(state)
    cfg = resolve(overrides, base=stored.to_dict())
    out = Path(args.out) if args.out else ckpt.parent
    finished = state["epoch"] >= stored.epochs and (out / "results.json").is_file()
    if finished and cfg.epochs <= state["epoch"]:
        raise AlreadyFinished(
            f"{out} is finished: {state['epoch']} of {stored.epochs} epochs trained, results in "
            f"{out / 'results.json'}; nothing was changed. To train further, raise --epochs "
            f"(e.g. --resume --epochs {state['epoch'] + 1}).")
    from .distributed import env_world_size

    same_global = stored.batch_size * state.get("world_size", 1) == (cfg.batch_size
                                                                   * env_world_size())
    changed = sorted(k for k, v in cfg.to_dict().items()  # another world size, same global
                     if v != getattr(stored, k) and k not in RESUME_SAFE  # batch: the same run
                     and not (k == "batch_size" and same_global))
    if changed:
        warnings.warn(f"--resume with changed {changed}: the continuation will not match an "
                      "uninterrupted run", stacklevel=2)
    return cfg, out, ckpt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .distributed import RankFailure
    from .trainer import NonFiniteError, Trainer

    try:  # bad input (config, data path, backbone, weights, checkpoint): one clear line
        cfg, out, ckpt = resolve_run(args)
        trainer = Trainer(cfg, out, resume=ckpt, quiet=args.quiet)
    except AlreadyFinished as done:
        print(f"csdfd.train: {done}")
        return 0
    except (ValueError, OSError, RuntimeError) as exc:
        parser.exit(2, f"csdfd.train: error: {exc}\n")
    try:
        result = trainer.fit(args.stop_after)
    except (NonFiniteError, RankFailure) as exc:
        print(f"csdfd.train: {exc}", file=sys.stderr)
        return 1
    finally:
        trainer.dp.close()
    return 130 if result["status"] == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
