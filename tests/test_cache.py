"""The preprocessing cache: same pixels as the streaming path, keyed by content and config."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np

from conftest import real_images
from pneumolens.config import DEFAULT
from pneumolens.data.cache import CachedDataset, cached_images, to_model_input
from pneumolens.data.images import preprocess, read_image
from pneumolens.data.sources import Sample

CFG = dataclasses.replace(DEFAULT.preprocess, image_size=48)  # CLAHE included, small for speed


def _samples(tmp_path, n=6):
    """Copies (not links) of real images, so that the test may change one."""
    out = []
    for i, f in enumerate(real_images("train", "NORMAL", n // 2) + real_images("train", "PNEUMONIA", n // 2)):
        dst = tmp_path / f"{i}_{f.name}"
        shutil.copyfile(f, dst)
        out.append(Sample(str(dst), int("PNEUMONIA" in f.name or "person" in f.name), f.name))
    return out


def test_cached_pixels_match_preprocess(tmp_path):
    samples = _samples(tmp_path)
    cache = cached_images(samples, CFG, tmp_path / "c", num_workers=0)
    assert cache.array.dtype == np.uint8 and cache.array.shape == (6, 1, 48, 48) and not cache.errors
    ds = CachedDataset(samples, cache)
    for i, s in enumerate(samples):
        expected = preprocess(read_image(s.path), CFG)
        got = to_model_input(ds[i]["image"][None], CFG.channels)[0].numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-6  # quantised to 1/255, nothing else
        assert ds[i]["label"] == s.label and ds[i]["path"] == s.path
    three = to_model_input(ds[0]["image"][None], 3)
    assert three.shape == (1, 3, 48, 48) and three.dtype.is_floating_point


def test_hit_and_rebuild_on_content_or_config_change(tmp_path):
    samples = _samples(tmp_path)
    first = cached_images(samples, CFG, tmp_path / "c", num_workers=0)
    again = cached_images(samples, CFG, tmp_path / "c", num_workers=0)
    assert again.key == first.key and again.build_seconds == 0.0 and first.build_seconds > 0
    np.testing.assert_array_equal(again.array, first.array)

    # same file name, new content: a new cache, with the new pixels
    shutil.copyfile(real_images("test", "NORMAL", 1)[0], samples[0].path)
    changed = cached_images(samples, CFG, tmp_path / "c", num_workers=0)
    assert changed.key != first.key and changed.build_seconds > 0
    assert not np.array_equal(changed.array[0], first.array[0])
    np.testing.assert_array_equal(changed.array[1:], first.array[1:])

    bigger = cached_images(samples, dataclasses.replace(CFG, image_size=40), tmp_path / "c", num_workers=0)
    assert bigger.key != changed.key and bigger.array.shape[-1] == 40


def test_unreadable_file_is_listed_and_never_served(tmp_path, caplog):
    samples = _samples(tmp_path, 4)
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    samples.append(Sample(str(broken), 0, "broken"))
    with caplog.at_level(logging.WARNING):
        cache = cached_images(samples, CFG, tmp_path / "c", num_workers=0)
    assert list(cache.errors) == [str(broken)] and "broken.jpeg" in caplog.text
    item = CachedDataset(samples, cache)[4]
    assert item["image"] is None and item["error"] == cache.errors[str(broken)]


def test_damaged_cache_is_rebuilt(tmp_path, caplog):
    samples = _samples(tmp_path, 4)
    cache = cached_images(samples, CFG, tmp_path / "c", num_workers=0)
    npy = tmp_path / "c" / f"{cache.key}.npy"
    reference = np.array(cache.array)
    del cache
    npy.write_bytes(npy.read_bytes()[:100])  # truncated, e.g. by a full disk in an older version
    with caplog.at_level(logging.WARNING):
        rebuilt = cached_images(samples, CFG, tmp_path / "c", num_workers=0)
    assert "rebuilding" in caplog.text and rebuilt.build_seconds > 0
    np.testing.assert_array_equal(rebuilt.array, reference)
    assert not list((tmp_path / "c").glob("*.tmp"))  # no temporary files left behind


def test_same_files_by_another_path_hit_the_cache_row_for_row(tmp_path, monkeypatch):
    """The cache is keyed by content: a relative spelling (or a symlinked folder) of the same files
    must be served the right rows, not a cache whose every row is 'missing'."""
    samples = _samples(tmp_path)
    first = cached_images(samples, CFG, tmp_path / "c", num_workers=0)
    (tmp_path / "link").symlink_to(tmp_path)
    monkeypatch.chdir(tmp_path / "link")
    relative = [Sample(Path(s.path).name, s.label, s.patient) for s in samples]
    again = cached_images(relative, CFG, tmp_path / "c", num_workers=0)
    assert again.key == first.key and again.build_seconds == 0.0
    ds = CachedDataset(relative, again)
    for i in range(len(relative)):
        item = ds[i]
        assert item["error"] is None and item["path"] == relative[i].path
        np.testing.assert_array_equal(item["image"].numpy(), first.array[i])
