"""A one-time preprocessing cache: decode and resize each image once, train at compute speed.

The cache for a list of files is one uint8 array (N, 1, H, W) in a ``.npy`` file, memory-mapped when
read, plus a JSON index. Its name is a hash of the files' *contents* in order, the preprocessing
config and the lung segmenter (for lung-aware preprocessing), so changing any file or any setting
builds a new cache and a stale one is never read. Row i is the i-th file of the list it was asked
for: the same files reached by another path (relative, absolute, a symlink) hit the same cache.
Pixels are quantised to 1/255: at most 0.5/255 from :func:`~pneumolens.data.images.preprocess`'s
float output. Channels are replicated when batches are made (:func:`to_model_input`), not stored.

Building is atomic (temporary files, then rename), and concurrent builders of the same cache (the
ranks of a distributed run) wait on a file lock, so one builds and the others read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pneumolens.config import PreprocessConfig
from pneumolens.data.sources import Sample

log = logging.getLogger(__name__)

CACHE_VERSION = 4  # 2: rows matched by position, not by path; 3: 16-bit PNGs at their bit depth; 4: EXIF orientation
CACHE_DIR_ENV = "PNEUMOLENS_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$PNEUMOLENS_CACHE_DIR``, else ``$XDG_CACHE_HOME/pneumolens``, else ``~/.cache/pneumolens``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pneumolens"


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(paths: Sequence[str], cfg: PreprocessConfig) -> str:
    """Hash of the files' contents (in order), the preprocessing config and the cache format.

    A file that cannot be read hashes as its error, so fixing it changes the key.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "preprocess": asdict(cfg)}, sort_keys=True).encode())
    if cfg.lungs != "none":
        from pneumolens.lungs.segment import LungSegmenter

        h.update(LungSegmenter.shipped().sha256.encode())
    for p in paths:
        try:
            h.update(_file_sha256(p).encode())
        except OSError as e:
            h.update(f"unreadable:{type(e).__name__}".encode())
    return h.hexdigest()[:32]


@dataclass
class CachedImages:
    """Preprocessed images of ``paths`` in ``array`` (uint8, memory-mapped); ``errors`` lists the
    files that could not be read (their rows are zeros and never served)."""

    paths: list[str]
    array: np.ndarray  # (N, 1, H, W) uint8
    errors: dict[str, str]
    key: str
    build_seconds: float = 0.0  # 0 when the cache was already there

    def index_of(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


class _Preprocessed(Dataset):
    def __init__(self, samples: Sequence[Sample], cfg: PreprocessConfig, lung_masks: dict | None) -> None:
        from pneumolens.data.dataset import XrayDataset

        # One channel is stored; channels are replicated at batch time.
        one = PreprocessConfig(**{**asdict(cfg), "channels": 1})
        self.inner = XrayDataset(samples, one, lung_masks=lung_masks)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        item = self.inner[i]
        if item["image"] is None:
            return i, None, item["error"]
        return i, np.rint(item["image"].numpy() * 255.0).astype(np.uint8), None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no lock; atomic renames still keep the cache whole
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open(directory: Path, key: str, paths: list[str]) -> CachedImages | None:
    index, data = directory / f"{key}.json", directory / f"{key}.npy"
    if not (index.is_file() and data.is_file()):
        return None
    try:
        meta = json.loads(index.read_text())
        array = np.load(data, mmap_mode="r")
    except (OSError, ValueError) as e:
        log.warning("preprocessing cache %s is unreadable (%s); rebuilding it", data, e)
        return None
    if array.shape[0] != len(paths) or meta.get("n") != len(paths):
        log.warning("preprocessing cache %s does not match its index; rebuilding it", data)
        return None
    errors = {paths[int(i)]: reason for i, reason in meta["errors"].items()}
    return CachedImages(list(paths), array, errors, key)


def cached_images(
    samples: Sequence[Sample],
    cfg: PreprocessConfig,
    cache_dir: str | os.PathLike[str] | None = None,
    num_workers: int = 2,
    lung_masks: dict[str, np.ndarray] | None = None,
) -> CachedImages:
    """The preprocessed images of ``samples``, from the cache or built into it now.

    ``lung_masks`` (by path) is only needed, and only computed by the caller, for lung-aware
    preprocessing when the cache is missing; pass ``None`` and they are computed here if needed.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    paths = [s.path for s in samples]
    key = cache_key(paths, cfg)
    # Building draws from torch's global RNG (DataLoader seeds); a hit does not. Forking keeps a
    # seeded run identical whether or not its cache was there.
    with _lock(directory / f"{key}.lock"), torch.random.fork_rng(devices=[]):
        found = _open(directory, key, paths)
        if found is not None:
            log.info("preprocessing cache hit: %d images from %s", len(paths), directory / f"{key}.npy")
            return found
        return _build(samples, cfg, directory, key, num_workers, lung_masks)


def _build(
    samples: Sequence[Sample],
    cfg: PreprocessConfig,
    directory: Path,
    key: str,
    num_workers: int,
    lung_masks: dict[str, np.ndarray] | None,
) -> CachedImages:
    from pneumolens.checkpoint import atomic_write

    t0 = time.perf_counter()
    if cfg.lungs != "none" and lung_masks is None:
        from pneumolens.data.dataset import lung_masks_for

        lung_masks = lung_masks_for(samples, num_workers)
    n, side = len(samples), cfg.image_size
    data = directory / f"{key}.npy"
    tmp = directory / f".{key}.{os.getpid()}.npy.tmp"
    errors: dict[int, str] = {}
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 1, side, side))
        loader = DataLoader(
            _Preprocessed(samples, cfg, lung_masks), batch_size=64, num_workers=num_workers, collate_fn=lambda b: b
        )
        for batch in loader:
            for i, img, err in batch:
                if img is None:
                    errors[i] = err
                else:
                    array[i] = img
        array.flush()
        del array
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, data)
    finally:
        tmp.unlink(missing_ok=True)
    # no paths in the index (rows are positional); error rows by position
    index = {
        "n": n,
        "errors": {str(i): r for i, r in errors.items()},
        "preprocess": asdict(cfg),
        "version": CACHE_VERSION,
    }
    atomic_write(directory / f"{key}.json", lambda t: Path(t).write_text(json.dumps(index)))
    seconds = time.perf_counter() - t0
    if errors:
        i, reason = next(iter(errors.items()))
        log.warning("%d file(s) could not be preprocessed, e.g. %s (%s)", len(errors), samples[i].path, reason)
    log.info("preprocessing cache built: %d images in %.1f s (%s)", n, seconds, data)
    built = _open(directory, key, [s.path for s in samples])
    assert built is not None
    built.build_seconds = seconds
    return built


class CachedDataset(Dataset):
    """Items in the streaming dataset's format, served from a :class:`CachedImages` (uint8 images)."""

    def __init__(self, samples: Sequence[Sample], cache: CachedImages) -> None:
        where = cache.index_of()
        self.samples = list(samples)
        self.rows = [where.get(s.path, -1) for s in self.samples]
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s, row = self.samples[i], self.rows[i]
        item = {"image": None, "label": s.label, "path": s.path, "error": None, "flags": [], "measures": {}}
        if row < 0 or s.path in self.cache.errors:
            return {**item, "error": self.cache.errors.get(s.path, "not in the preprocessing cache")}
        return {**item, "image": torch.from_numpy(np.array(self.cache.array[row]))}


def to_model_input(
    x: torch.Tensor, channels: int, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """A batch from either dataset as float32 in [0, 1] with ``channels`` channels.

    Cached batches arrive as uint8 with one channel (a quarter of the bytes to move to a GPU);
    streamed ones are already float. ``transform`` (e.g. augmentation) runs on the float batch
    before channels are replicated: fewer pixels to resample.
    """
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    if transform is not None:
        x = transform(x)
    if x.shape[1] != channels:
        x = x.expand(-1, channels, -1, -1)
    return x
