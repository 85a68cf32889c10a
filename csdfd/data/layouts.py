"""Published folder layouts of the deepfake video datasets of the paper (section V-A).

Each layout function reads a dataset root exactly as its authors distribute it and returns
:class:`Video` records (label 0 = real, 1 = fake, official split). A missing folder or file is
an error that names it. Videos are listed, not opened: ``python -m csdfd.preprocess`` turns them
into face crops.

- ``ffpp``: FaceForensics++ (Rossler et al., ICCV 2019). ``original_sequences/youtube/Q/videos``
  and ``manipulated_sequences/METHOD/Q/videos`` for Q in raw / c23 / c40; the official
  ``train.json`` / ``val.json`` / ``test.json`` pair lists (from the dataset root or its
  ``splits/`` folder, else the copy shipped in :mod:`csdfd.data.ffpp_splits`). A fake ``a_b``
  and ``b_a`` follows the split of its pair. Without ``methods=``, the methods present are
  read (many downloads lack FaceShifter); named methods must all be present.
- ``celebdf``: Celeb-DF v2. ``Celeb-real/``, ``YouTube-real/``, ``Celeb-synthesis/`` and
  ``List_of_testing_videos.txt`` (its "1" means real); listed videos are test, others train.
- ``dfdc``: DFDC. Every ``labels.csv`` (``filename,label``; 1 = fake; the test set) or
  ``metadata.json`` (``{"x.mp4": {"label": "FAKE", "split": "train"}}``; training parts) under
  the root, with its videos beside it or in ``videos/``.
- ``dfdcp``: DFDC preview. ``dataset.json`` mapping relative paths to ``label`` and ``set``.
- ``uadfv``: UADFV. ``real/``, ``fake/`` (all test).
- ``folder``: any ``real/`` and ``fake/`` folders of videos, frame folders or images, optionally
  under ``train/``, ``val/``, ``test/`` (else all test).
"""

from __future__ import annotations

import csv
import inspect
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import ffpp_splits

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
QUALITIES = ("raw", "c23", "c40")
SPLITS = ("train", "val", "test")


class LayoutError(FileNotFoundError):
    """A dataset folder does not match its published layout."""


@dataclass(frozen=True)
class Video:
    """One video (a file, a folder of frames or a single image) of a dataset."""

    dataset: str  # layout name: ffpp, celebdf, ...
    method: str  # "real" sub-folder or manipulation method: youtube, Deepfakes, Celeb-real, ...
    video_id: str  # unique within (dataset, method), e.g. "000_003"; may contain "/"
    label: int  # 0 real, 1 fake
    split: str  # train / val / test
    path: Path
    quality: str = ""  # FF++ compression: raw / c23 / c40

    @property
    def key(self) -> str:
        """dataset/method/video_id: unique, so that videos of two methods never merge."""
        return f"{self.dataset}/{self.method}/{self.video_id}"


def _need(path: Path, what: str, hint: str = "") -> Path:
    if not path.exists():
        raise LayoutError(f"{what} not found: {path}" + (f" ({hint})" if hint else ""))
    return path


def is_media(path: Path) -> bool:
    """A video file, an image file, or a folder that holds image files."""
    suffix = path.suffix.lower()
    if path.is_file():
        return suffix in VIDEO_EXTS or suffix in IMAGE_EXTS
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir())


def list_media(folder: Path) -> list[Path]:
    """Sorted videos, images and frame folders directly inside ``folder``."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and is_media(p))


def _stem(path: Path) -> str:
    return path.stem if path.is_file() else path.name


# --- FaceForensics++ -------------------------------------------------------------------------


def ffpp_split_map(root: Path, splits: Path | None = None) -> dict[str, str]:
    """Video name -> split for reals ``a`` and fakes ``a_b`` / ``b_a`` of every official pair."""
    folder = splits or next((d for d in (root, root / "splits") if (d / "train.json").exists()),
                            None)
    pairs: dict[str, list] = {}
    for split in SPLITS:
        if folder is None:
            pairs[split] = ffpp_splits.pairs(split)
            continue
        path = _need(folder / f"{split}.json", "FF++ split file",
                     "train.json, val.json and test.json come from the FaceForensics repository")
        try:
            pairs[split] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise LayoutError(f"FF++ split file {path} is not valid JSON: {exc}") from exc
    out: dict[str, str] = {}
    for split, items in pairs.items():
        for pair in items:
            if len(pair) != 2:
                raise LayoutError(f"FF++ split {split}: expected [a, b] pairs, got {pair!r}")
            a, b = (str(x) for x in pair)
            for name in (a, b, f"{a}_{b}", f"{b}_{a}"):
                if out.setdefault(name, split) != split:
                    raise LayoutError(f"FF++ splits put {name} in both {out[name]} and {split}")
    return out


def _ffpp_media(folder: Path) -> Path:
    """``videos/``, or ``images/`` where the FF++ scripts already extracted the frames."""
    if not (folder / "videos").exists() and (folder / "images").exists():
        return folder / "images"
    return folder / "videos"


def ffpp_methods_present(root: Path, quality: str = "c23") -> tuple[str, ...]:
    """The FF++ methods whose ``manipulated_sequences/METHOD/quality`` media folder exists."""
    return tuple(m for m in FFPP_METHODS
                 if _ffpp_media(root / "manipulated_sequences" / m / quality).exists())


def _ffpp_hint(root: Path, quality: str, label: int) -> str:
    if label == 0:
        return "download it with the FF++ script, or pick the compression you have with --quality"
    have = "+".join(ffpp_methods_present(root, quality)) or "Deepfakes"
    return ("download it with the FF++ script, or name the methods you have: "
            f"ffpp:{root},methods={have}")


def ffpp(root: Path, quality: str = "c23", methods: tuple[str, ...] | None = None,
         splits: Path | None = None) -> list[Video]:
    """FaceForensics++: 1,000 real videos and 1,000 fakes per method at one compression.

    ``methods=None`` reads every method present (:func:`ffpp_methods_present`): FaceShifter
    came after the other four, and many downloads lack it. Named methods must all be there."""
    if quality not in QUALITIES:
        raise ValueError(f"FF++ quality must be one of {QUALITIES}, but got {quality!r}")
    if methods is None:
        methods = ffpp_methods_present(root, quality)
        if not methods:
            raise LayoutError(f"FF++: no manipulated_sequences/METHOD/{quality}/videos folder "
                              f"in {root} for any of {', '.join(FFPP_METHODS)}; download at "
                              "least one method with the FF++ script (or pick the compression "
                              "you have with --quality)")
    unknown = [m for m in methods if m not in FFPP_METHODS]
    if unknown:
        raise ValueError(f"unknown FF++ methods {unknown}; choose from {FFPP_METHODS}")
    split_of = ffpp_split_map(root, splits)
    folders = [("youtube", 0, root / "original_sequences" / "youtube" / quality)]
    folders += [(m, 1, root / "manipulated_sequences" / m / quality) for m in methods]
    videos: list[Video] = []
    for method, label, folder in folders:
        media = _ffpp_media(folder)
        if not media.exists():
            _need(media, f"FF++ {method} {quality} videos folder", _ffpp_hint(root, quality, label))
        unsplit = []
        for path in list_media(media):
            name = _stem(path)
            if name not in split_of:
                unsplit.append(name)
                continue
            videos.append(Video("ffpp", method, name, label, split_of[name], path, quality))
        if unsplit:
            warnings.warn(f"{media}: {len(unsplit)} videos in no official split were skipped "
                          f"(first: {unsplit[:3]})", stacklevel=2)
    return videos


# --- Celeb-DF v2 ------------------------------------------------------------------------------

CELEBDF_FOLDERS = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}


def celebdf(root: Path) -> list[Video]:
    """Celeb-DF v2: 590 + 300 real and 5,639 fake videos; the official list is the test set."""
    listing = _need(root / "List_of_testing_videos.txt", "Celeb-DF test list")
    test: dict[str, int] = {}
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise LayoutError(f"{listing}:{n}: expected '<1 real|0 fake> <folder>/<video>', "
                              f"got {line!r}")
        test[parts[1].replace("\\", "/")] = 1 - int(parts[0])  # the list writes 1 for real
    videos = []
    for folder, label in CELEBDF_FOLDERS.items():
        media = _need(root / folder, "Celeb-DF folder")
        if (media / "videos").is_dir():  # some re-packagings add a videos/ level
            media = media / "videos"
        for path in list_media(media):
            rel = f"{folder}/{path.name}"
            if rel in test and test[rel] != label:
                raise LayoutError(f"{listing} labels {rel} as "
                                  f"{'fake' if test[rel] else 'real'}, but it is in {folder}/")
            split = "test" if rel in test else "train"
            videos.append(Video("celebdf", folder, _stem(path), label, split, path))
    _warn_missing(listing, set(test) - {f"{v.method}/{v.path.name}" for v in videos})
    return videos


def _warn_missing(source: Path, missing: set[str]) -> None:
    if missing:
        warnings.warn(f"{source} lists {len(missing)} videos that are not on disk "
                      f"(first: {sorted(missing)[:3]}); they are skipped", stacklevel=3)


# --- DFDC and DFDC preview ----------------------------------------------------------------------


def _video_dir(part: Path) -> Path:
    return part / "videos" if (part / "videos").is_dir() else part


def dfdc(root: Path) -> list[Video]:
    """DFDC: parts with ``labels.csv`` (test set) or ``metadata.json`` (training parts)."""
    _need(root, "DFDC folder")
    listings = sorted(p for pattern in ("labels.csv", "metadata.json", "*/labels.csv",
                                        "*/metadata.json", "*/*/labels.csv",
                                        "*/*/metadata.json") for p in root.glob(pattern))
    if not listings:
        raise LayoutError(f"DFDC: no labels.csv or metadata.json found in {root} or the part "
                          "folders below it")
    videos: list[Video] = []
    for listing in listings:
        part = _video_dir(listing.parent)
        entries = _dfdc_labels(listing) if listing.suffix == ".csv" else _dfdc_meta(listing)
        missing = set()
        for name, (label, split) in entries.items():
            path = part / name
            if not path.exists():
                missing.add(name)
                continue
            method = "fake" if label else "real"
            videos.append(Video("dfdc", method, Path(name).stem, label, split, path))
        _warn_missing(listing, missing)
    return videos


def _dfdc_labels(path: Path) -> dict[str, tuple[int, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
            raise LayoutError(f"{path}: expected the columns filename,label, got "
                              f"{reader.fieldnames}")
        return {row["filename"]: (int(float(row["label"])), "test") for row in reader}


def _dfdc_meta(path: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for name, info in json.loads(path.read_text()).items():
        label = str(info.get("label", "")).upper()
        if label not in ("REAL", "FAKE"):
            raise LayoutError(f"{path}: {name} has label {info.get('label')!r}, not REAL/FAKE")
        out[name] = (int(label == "FAKE"), str(info.get("split", "train")))
    return out


def dfdcp(root: Path) -> list[Video]:
    """DFDC preview: ``dataset.json`` gives each video's label and its ``set`` (train/test)."""
    listing = _need(root / "dataset.json", "DFDC-preview dataset.json")
    videos, missing = [], set()
    for rel, info in json.loads(listing.read_text()).items():
        label, split = str(info.get("label", "")).lower(), info.get("set")
        if label not in ("real", "fake") or split not in ("train", "test"):
            raise LayoutError(f"{listing}: {rel} needs label real/fake and set train/test, got "
                              f"{info}")
        path = root / rel
        if not path.exists():
            missing.add(rel)
            continue
        method, _, rest = rel.replace("\\", "/").partition("/")
        videos.append(Video("dfdcp", method, str(Path(rest).with_suffix("")),
                            int(label == "fake"), split, path))
    _warn_missing(listing, missing)
    return videos


# --- UADFV and any real/ fake/ folder -------------------------------------------------------------


def _real_fake(dataset: str, root: Path, split: str) -> list[Video]:
    videos = []
    for method, label in (("real", 0), ("fake", 1)):
        folder = _need(root / method, f"{dataset} {method}/ folder")
        videos += [Video(dataset, method, _stem(p), label, split, p) for p in list_media(folder)]
    return videos


def uadfv(root: Path) -> list[Video]:
    """UADFV: 49 real and 49 fake videos in ``real/`` and ``fake/``; a test-only set."""
    return _real_fake("uadfv", root, "test")


def folder(root: Path, name: str = "folder") -> list[Video]:
    """``real/`` + ``fake/`` (all test), or ``train|val|test/{real,fake}/``."""
    _need(root, "dataset folder")
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    if split_dirs:
        return [v for s in split_dirs for v in _real_fake(name, root / s, s)]
    return _real_fake(name, root, "test")


LAYOUTS: dict[str, Callable[..., list[Video]]] = {
    "ffpp": ffpp, "celebdf": celebdf, "dfdc": dfdc, "dfdcp": dfdcp, "uadfv": uadfv,
    "folder": folder,
}


def parse_spec(spec: str) -> tuple[str, Path, dict[str, str]]:
    """``NAME:PATH[,key=value...]`` -> (name, path, options), e.g. ``ffpp:/data/FF,quality=c40``."""
    name, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"dataset spec {spec!r} must look like NAME:PATH with NAME one of "
                         f"{sorted(LAYOUTS) + ['deepfakebench']}")
    path, *opts = rest.split(",")
    options = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq:
            raise ValueError(f"dataset spec {spec!r}: option {opt!r} must be key=value")
        options[key.strip()] = value.strip()
    return name.strip().lower(), Path(path).expanduser(), options


def load(layout: str, root: Path, **options) -> list[Video]:
    """The videos of dataset ``layout`` at ``root`` (options: see each layout function)."""
    name = layout
    if name not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {name!r}; choose one of {sorted(LAYOUTS)}")
    allowed = set(inspect.signature(LAYOUTS[name]).parameters) - {"root"}
    if set(options) - allowed:
        raise ValueError(f"dataset {name} takes the options {sorted(allowed)}, but got "
                         f"{sorted(set(options) - allowed)}")
    if name == "ffpp":
        if isinstance(options.get("methods"), str):
            options["methods"] = tuple(m for m in options["methods"].replace("+", ",").split(",")
                                       if m)
        if options.get("splits"):
            options["splits"] = Path(options["splits"])
    return LAYOUTS[name](Path(root), **options)
