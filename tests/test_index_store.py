"""The index folder's layout (vitrieval.index.store): which folders a build may write into. A non-empty folder that
is not (a former attempt at) an index is refused; one that holds only what an interrupted build or save leaves
(its journal, written before the first generation; its descriptor shards; its model) is taken up again."""

from __future__ import annotations

import pytest

from vitrieval.index.store import check_out_dir


@pytest.mark.parametrize("left", [[], ["journal.sqlite"], ["journal.log"], ["shards/"], ["model/"], ["index.json"],
                                  ["g000001/", "journal.sqlite"]])
def test_a_folder_an_interrupted_build_left_is_taken_up_again(tmp_path, left):
    out = tmp_path / "cat.idx"
    out.mkdir()
    for name in left:
        (out / name.rstrip("/")).mkdir() if name.endswith("/") else (out / name).write_bytes(b"")
    check_out_dir(out)  # no error


def test_a_folder_of_other_files_is_refused_and_so_is_a_file(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ValueError, match="photos is a non-empty folder that is not a vitrieval index"):
        check_out_dir(out)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_out_dir(tmp_path / "f")
