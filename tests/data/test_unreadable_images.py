"""Every unreadable image is named: in the one-line error when there are a few, else in a
file that the error names (issue 41: one fix-and-rerun per file is gone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from activedet.data import verify
from activedet.errors import DatasetError


def broken(tmp_path: Path, n: int) -> dict[int, Path]:
    files = {}
    for i in range(n):
        files[100 + i] = tmp_path / f"broken{i}.png"
        files[100 + i].write_bytes(b"\x89PNG not really")
    return files


def test_a_few_unreadable_images_are_all_named_in_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(verify.CACHE_ENV, str(tmp_path / "cache"))
    files = broken(tmp_path, 3)
    with pytest.raises(DatasetError) as e:
        verify.verify_files(files, "unlabeled", "error", progress=False)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith("3 images cannot be decoded: ")
    assert all(f"cannot decode image {p} (image id {i})" in msg for i, p in files.items())


def test_many_unreadable_images_are_listed_in_a_file_the_error_names(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(verify.CACHE_ENV, str(tmp_path / "cache"))
    files = broken(tmp_path, verify.NAMED_IN_MESSAGE + 2)
    with pytest.raises(DatasetError) as e:
        verify.verify_files(files, "unlabeled", "error", progress=False)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(f"{len(files)} images cannot be decoded, every one listed in ")
    listing = Path(msg.split("listed in ", 1)[1].split(" (the first", 1)[0])
    lines = listing.read_text().splitlines()
    assert len(lines) == len(files)
    assert {line.split("(image id ")[1].split(")")[0] for line in lines} == {str(i) for i in files}
    # skip: all of them are quarantined, none raises
    assert sorted(verify.verify_files(files, "unlabeled", "skip", progress=False)) == sorted(files)
