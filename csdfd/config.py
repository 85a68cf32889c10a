"""One configuration dataclass for training, with the paper's defaults for real data.

Paper: "Suppressing Gradient Conflict for Generalizable Deepfake Detection" (section V-A):
EfficientNet-B4 backbone, 256 x 256 faces, batch size 16, c = 0.5 (UVS, eq. 11), tau = 0.01
(CGR, eq. 24). Choices the paper leaves open (optimizer, schedule, projection-layer size,
batch composition) are documented next to each field.

Resolution order (later wins): dataclass defaults -> :data:`SYNTHETIC_PRESET` when ``data`` is
``"synthetic"`` (the embedded benchmark is small, 64-px, and has no pretrained weights, so the
paper's EfficientNet-B4 at 256 px would not finish on a laptop) -> ``--config FILE.yaml`` ->
command-line flags. On ``--resume`` the checkpoint's config replaces the first two steps.
The resolved config is written to ``OUT/config.yaml`` and stored in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Training strategies (paper Tables II and III); see csdfd.trainer.STRATEGIES for the rules.
MODES = ("O", "S", "OS", "csdfd", "uvs", "cgr")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" mirrors argparse
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    """Everything a run needs; field docs double as ``--help`` text."""

    # --- data ----------------------------------------------------------------------------------
    data: str = _f("synthetic", "'synthetic' (embedded benchmark, no download) or a dataset "
                   "folder prepared by `python -m csdfd.preprocess`, as NAME:FACES[,options] "
                   "(e.g. ffpp:/data/faces/ffpp; see csdfd.data.frames)")
    # real data (csdfd.data.frames): --data NAME:FACES, --test NAME:FACES (repeatable)
    test: list[str] = field(default_factory=list, metadata={"help": "cross-domain test set "
                            "NAME:FACES (repeatable), e.g. celebdf:/data/faces/celebdf"})
    quality: str = _f("c23", "FF++ compression of --data ffpp:... (raw, c23 or c40)")
    blend: str = _f("sbi", "self-blending for stream 2's online fakes xs: 'sbi' (paper, full SBI) "
                    "or 'simple' (csdfd.data.selfblend)")
    img_size: int = _f(256, "input resolution in pixels (paper: 256)")
    batch_size: int = _f(16, "real frames per step; each step also takes as many original fakes "
                         "(stream 1) and as many self-blended fakes of those reals (stream 2), "
                         "so one forward sees 3x this many images (paper: 16)")
    hflip: float = _f(0.5, "probability of a horizontal flip per training image")
    val_blend: bool = _f(True, "add self-blended fakes of the validation reals to the validation "
                         "set used for checkpoint selection (both kinds of training fakes)")
    synth_train_ids: int = _f(60, "synthetic: identities in the training split")
    synth_val_ids: int = _f(10, "synthetic: identities in the validation split")
    synth_test_ids: int = _f(30, "synthetic: identities in the in-domain test split and in each "
                             "cross-domain target set")
    synth_frames: int = _f(20, "synthetic: frames per training identity")
    synth_eval_frames: int = _f(10, "synthetic: frames per identity in validation and test sets")
    # --- model ---------------------------------------------------------------------------------
    backbone: str = _f("efficientnet_b4", "any timm model name (paper: EfficientNet-B4)")
    pretrained: bool = _f(False, "load timm's pretrained weights (needs network access)")
    weights: str | None = _f(None, "local backbone weights file (timm/torch state dict or "
                             ".safetensors) loaded into the backbone")
    proj_depth: int = _f(2, "linear layers in the CGR projection phi (0: no projection layer)")
    proj_width: int = _f(512, "width of phi's layers (the paper: 'several linear layers')")
    proj_act: str = _f("gelu", "activation between phi's linear layers: gelu, relu or silu")
    drop_rate: float = _f(0.0, "dropout before the classifier")
    # --- strategy (Algorithm 1) ----------------------------------------------------------------
    mode: str = _f("csdfd", "O | S | OS | csdfd | uvs | cgr (paper Tables II and III)")
    c: float = _f(0.5, "UVS trust-region size c (eq. 11; paper: 0.5)")
    tau: float = _f(0.01, "CGR Fisher scale tau (eq. 24; paper: 0.01)")
    cgr_grad: str = _f("eq24", "phi's conflict-descent gradient: 'eq24' (paper, diagonal-Fisher "
                       "approximation) or 'exact' (dL_phi/dtheta_p by double backward through "
                       "phi and the classifier; csdfd.cgr_exact)")
    cgr_weight: float = _f(1.0, "weight of the exact dL_phi/dtheta_p under cgr_grad=exact (1: "
                           "eq. 19's L1 + L2 + L_phi; eq24 is scaled by tau instead)")
    stream_grads: str = _f("auto", "how g1 and g2 are computed: 'two-pass' (one backward per "
                           "stream), 'one-pass' (one backward of L1 + L2 split by row group; "
                           "only for backbones whose layers never mix samples: LayerNorm or "
                           "GroupNorm networks such as ViT, DeiT, ConvNeXt) or 'auto' (one-pass "
                           "where valid, else two-pass, saying why; csdfd.streamgrads)")
    solver: str = _f("pgd", "mu solver: 'pgd' (paper eq. 16) or 'exact' (K = 2 closed form)")
    mu_iters: int | None = _f(None, "iterations of the mu solver (None: the op's default)")
    backend: str = _f("reference", "gradient-op backend: reference | cpp | cuda | triton | auto "
                      "(--fused is backend=auto, the fastest available)")
    # --- optimisation (the paper does not state these; our choices) -------------------------------
    optimizer: str = _f("adamw", "adamw | adam | sgd")
    lr: float = _f(2e-4, "peak learning rate")
    weight_decay: float = _f(1e-4, "weight decay (decoupled for adamw)")
    momentum: float = _f(0.9, "SGD momentum")
    schedule: str = _f("cosine", "learning-rate schedule after warmup: cosine (to 0 at the last "
                       "step of `epochs`) or constant")
    warmup: float = _f(0.05, "linear warmup, as a fraction of all steps")
    epochs: int = _f(20, "training epochs (one epoch = one pass over the real training frames)")
    # --- run -----------------------------------------------------------------------------------
    seed: int = _f(0, "seed of the model init, data order, self-blends and synthetic data")
    device: str = _f("auto", "auto (cuda if available) | cpu | cuda | cuda:N")
    amp: bool = _f(False, "bfloat16 autocast for forward and backward")
    channels_last: bool = _f(False, "channels_last memory format for model and inputs")
    compile: bool = _f(False, "torch.compile the backbone's forward (both stream-gradient "
                       "paths; the first steps compile, for a minute or more on a CPU; off by "
                       "default: see bench/bench_compile.py)")
    keep_cpu_memory: bool = _f(True, "training on a CPU with glibc: keep freed memory in the "
                               "process instead of faulting each step's pages in again "
                               "(csdfd.cpumem; faster steps, most of all two-pass; the process "
                               "keeps its peak memory)")
    eval_batch_size: int = _f(128, "batch size of evaluation")
    workers: int = _f(0, "DataLoader worker processes building training steps (0: in the "
                      "main process; results are identical either way)")
    log_every: int = _f(10, "steps between host reads of the losses and UVS/CGR diagnostics")
    max_nonfinite: int = _f(20, "stop after this many consecutive non-finite steps")
    tensorboard: bool = _f(False, "also log to TensorBoard in OUT/tb (needs `tensorboard`)")
    # --- several processes (torchrun; csdfd.distributed) ---
    dist_uvs: str = _f("exact", "under torchrun: 'exact' (UVS/CGR on the global gradients: the "
                       "[2, P] buffer is all-reduced) or 'local' (per-rank UVS/CGR, only the "
                       "combined row averaged: half the traffic, an approximation)")
    sync_bn: bool = _f(False, "under torchrun: SyncBatchNorm (GPU only; default: per-rank BN "
                       "statistics, as DDP)")
    dist_timeout: float = _f(300.0, "seconds a rank waits for the others before it stops with "
                             "an error naming the rank that did not answer")

    def validate(self) -> Config:
        """Raise ValueError naming the first bad field and the fix; returns self."""
        checks = [
            (self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}"),
            (self.quality in ("raw", "c23", "c40"),
             f"quality must be raw, c23 or c40, got {self.quality!r}"),
            (self.c >= 0, f"c must be non-negative, but got {self.c}"),
            (self.tau >= 0, f"tau must be non-negative, but got {self.tau}"),
            (self.cgr_grad in ("eq24", "exact"),
             f"cgr_grad must be eq24 or exact, got {self.cgr_grad!r}"),
            (0 <= self.cgr_weight < float("inf"),
             f"cgr_weight must be finite and non-negative, but got {self.cgr_weight}"),
            (self.proj_depth >= 0, f"proj_depth must be >= 0, got {self.proj_depth}"),
            (self.proj_depth > 0 or self.mode not in ("csdfd", "cgr"),
             f"mode {self.mode!r} applies CGR to the projection layer: set proj_depth >= 1"),
            (self.proj_width >= 1, f"proj_width must be >= 1, got {self.proj_width}"),
            (self.proj_act in ("gelu", "relu", "silu"),
             f"proj_act must be gelu, relu or silu, got {self.proj_act!r}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.img_size >= 16, f"img_size must be >= 16 pixels, got {self.img_size}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (0 <= self.warmup < 1,
             f"warmup is a fraction of all steps in [0, 1), got {self.warmup}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.stream_grads in ("auto", "two-pass", "one-pass"),
             f"stream_grads must be auto, two-pass or one-pass, got {self.stream_grads!r}"),
            (self.solver in ("pgd", "exact"), f"solver must be pgd or exact, got {self.solver!r}"),
            (0 <= self.hflip <= 1, f"hflip is a probability, got {self.hflip}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.max_nonfinite >= 1, f"max_nonfinite must be >= 1, got {self.max_nonfinite}"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.dist_uvs in ("exact", "local"),
             f"dist_uvs must be exact or local, got {self.dist_uvs!r}"),
            (self.dist_timeout > 0, f"dist_timeout must be > 0 seconds, got {self.dist_timeout}"),
            (min(self.synth_train_ids, self.synth_val_ids, self.synth_test_ids) >= 2,
             "synth_*_ids must be >= 2 (a swap needs two identities per split)"),
            (min(self.synth_frames, self.synth_eval_frames) >= 1, "synth_*frames must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Defaults for the embedded synthetic benchmark (applied under YAML and flags): a small timm
#: EfficientNet at 64 px trained from scratch (no download), so `python -m csdfd.train --fused`
#: finishes in minutes on 2 CPU cores; batch size, c, tau, optimizer and schedule stay the
#: paper's / real-data ones. Real data keeps the defaults above.
SYNTHETIC_PRESET: dict[str, Any] = {
    "backbone": "test_efficientnet",  # timm's 0.1M-parameter EfficientNet; learnt fastest here
    "img_size": 64,
    "blend": "simple",
    "proj_width": 128,
    "lr": 3e-3,
    "epochs": 8,
}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def unknown_hint(name: str, known: list[str]) -> str:
    """``name`` quoted, with the closest known name when there is one ("did you mean lr?")."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"{name!r}" + (f" (did you mean {close[0]}?)" if close else "")


_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false",
             "str": "a string", "list[str]": "a list of strings"}


def _as(kind: str, value: Any) -> Any:
    """``value`` as ``kind`` when the conversion is unambiguous, else raise TypeError."""
    if isinstance(value, bool) != (kind == "bool"):  # True is an int in Python, not here
        raise TypeError
    if kind == "bool" or (kind == "str" and isinstance(value, str)):
        return value
    if kind == "int":
        if isinstance(value, str):  # "3" or "2.0": a quoted YAML value or a flag
            try:
                value = int(value)
            except ValueError:
                value = float(value)
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)  # 2.0 -> 2; 1.5 stays an error
    if kind == "float" and isinstance(value, (int, float, str)):
        return float(value)  # PyYAML reads 1e-3 (no dot) as the string "1e-3"
    if kind == "list[str]":
        items = [value] if isinstance(value, str) else value  # one set without brackets
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return list(items)
    raise TypeError


def coerce(name: str, value: Any, where: str = "") -> Any:
    """``value`` as the type of Config field ``name``.

    Unambiguous conversions only: an integral number to an int (2.0), a number or numeric
    string to a float ("1e-3"), one string to a one-item list, "none"/"null" to None where the
    field is optional. Anything else raises ValueError naming ``where`` (e.g. the YAML file),
    the field, the expected type and the value.
    """
    kind = Config.__dataclass_fields__[name].type
    optional = kind.endswith(" | None")
    kind = kind.removesuffix(" | None")
    if optional and (value is None or (isinstance(value, str)
                                       and value.strip().lower() in ("none", "null", ""))):
        return None
    try:
        return _as(kind, value)
    except (TypeError, ValueError):
        expected = _EXPECTED[kind] + (" or null" if optional else "")
        hint = " (quote it in YAML)" if kind == "str" and value is not None else ""
        raise ValueError(f"{where}{name} must be {expected}, got {value!r}{hint}") from None


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping of Config fields, typed (:func:`coerce`); errors name the file, the
    bad key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field: value")
    _check_known(data, f"config file {path}: ")
    return {k: coerce(k, v, f"config file {path}: ") for k, v in data.items()}


def _check_known(values: dict, where: str) -> None:
    unknown = [str(k) for k in values if k not in Config.__dataclass_fields__]
    if unknown:
        names = ", ".join(unknown_hint(k, field_names()) for k in unknown)
        raise ValueError(f"{where}unknown field(s) {names}; the fields are the --help flags "
                         "with _ for -")


def resolve(overrides: dict, base: dict | None = None) -> Config:
    """Build a validated Config: ``base`` (a checkpoint's config) or the defaults plus the
    synthetic preset, then ``overrides`` (YAML values updated by flags), every value typed by
    :func:`coerce`."""
    _check_known(overrides, "")
    if base is None:
        base = Config().to_dict()
        if overrides.get("data", base["data"]) == "synthetic":
            base.update(SYNTHETIC_PRESET)
    values = {**base, **overrides}
    return Config(**{k: coerce(k, values[k]) for k in field_names()}).validate()


def dump_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
