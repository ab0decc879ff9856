import io
import tarfile

import pytest

from flan_t5_detox.contract.archives import resolve_folder, unpack
from flan_t5_detox.contract.failure import JobInputError

MARKER = "adapter_config.json"


def _tarball(path, files: dict[str, bytes], symlink: str = ""):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink:
            link = tarfile.TarInfo(symlink)
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            archive.addfile(link)
    return path


def test_a_folder_holding_the_marker_is_used_as_it_is(tmp_path):
    (tmp_path / MARKER).write_text("{}")
    assert resolve_folder(tmp_path, MARKER, "input 'x'") == tmp_path


def test_a_model_tarball_or_a_folder_holding_one_resolves_to_what_it_unpacks_to(tmp_path):
    tarball = _tarball(tmp_path / "model.tar.gz", {MARKER: b"{}", "adapter_model.bin": b"w"})
    folder = resolve_folder(tarball, MARKER, "input 'x'", scratch=tmp_path)
    assert (folder / "adapter_model.bin").read_bytes() == b"w" and folder.parent == tmp_path
    given = tmp_path / "given"
    given.mkdir()
    _tarball(given / "output.tar.gz", {"nested/deeper/" + MARKER: b"{}"})
    assert resolve_folder(given, MARKER, "input 'x'", scratch=tmp_path).name == "deeper"


def test_none_or_several_tarballs_or_no_marker_inside_are_clear_errors(tmp_path):
    with pytest.raises(JobInputError, match=f"input 'x': .* has no {MARKER} and no tarball"):
        resolve_folder(tmp_path, MARKER, "input 'x'")
    _tarball(tmp_path / "a.tar.gz", {"other.txt": b""})
    _tarball(tmp_path / "b.tgz", {"other.txt": b""})
    with pytest.raises(JobInputError, match="and 2 tarball"):
        resolve_folder(tmp_path, MARKER, "input 'x'")
    with pytest.raises(JobInputError, match=f"a.tar.gz holds no {MARKER}"):
        resolve_folder(tmp_path / "a.tar.gz", MARKER, "input 'x'", scratch=tmp_path)


def test_entries_outside_the_archive_are_refused_and_links_are_dropped(tmp_path):
    escaping = _tarball(tmp_path / "escape.tar.gz", {"../outside.txt": b"x"})
    with pytest.raises(JobInputError, match="points outside the archive"):
        unpack(escaping, scratch=tmp_path)
    assert not (tmp_path / "outside.txt").exists()
    linked = _tarball(tmp_path / "link.tar.gz", {"kept.txt": b"k"}, symlink="passwd")
    dest = unpack(linked, scratch=tmp_path)
    assert sorted(p.name for p in dest.iterdir()) == ["kept.txt"]


def test_a_damaged_archive_is_named(tmp_path):
    damaged = tmp_path / "model.tar.gz"
    damaged.write_bytes(b"not a tarball")
    with pytest.raises(JobInputError, match=f"cannot unpack {damaged}"):
        unpack(damaged, scratch=tmp_path)
