"""Crash-safe output helpers."""

from __future__ import annotations

import pytest

from perpo.io import atomic_dir, atomic_open, load_image, read_jsonl, write_jsonl


def test_atomic_dir_keeps_old_content_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind


def test_atomic_open_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(ValueError), atomic_open(target) as handle:
        handle.write("{partial")
        raise ValueError("bad input")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_jsonl_round_trip_and_error_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"b": 1, "a": "é"}, {"c": [1, 2]}])
    assert read_jsonl(path) == [{"a": "é", "b": 1}, {"c": [1, 2]}]
    path.write_text('{"ok": 1}\n{broken\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_load_image_is_rgb_and_fully_read(tmp_path):
    from PIL import Image

    path = tmp_path / "grey.png"
    Image.new("L", (3, 2), 7).save(path)
    image = load_image(path)
    path.unlink()  # the pixels are already in memory
    assert image.mode == "RGB" and image.size == (3, 2) and image.getpixel((2, 1)) == (7, 7, 7)
