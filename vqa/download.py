"""``vqa download`` (``make download``): fetch the VQA v2 files and COCO 2014 images into the official layout.

Each zip is downloaded to ``<name>.part``, resumed with an HTTP Range request after an
interruption, checked against the server's size, renamed, and unpacked into the output
folder; a ``.<name>.done`` marker makes a second run skip it. The zips unpack to the
layout ``vqa preprocess`` reads: the JSON files at the top, images in ``train2014/``,
``val2014/``, ``test2015/``.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Sequence

from vqa.errors import VQAError
from vqa.progress import progress

VQA_URL = "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/"
IMAGES_URL = "http://images.cocodataset.org/zips/"

# name -> official base URL. Sizes come from the server (Content-Length).
FILES = {
    "v2_Questions_Train_mscoco.zip": VQA_URL,
    "v2_Questions_Val_mscoco.zip": VQA_URL,
    "v2_Questions_Test_mscoco.zip": VQA_URL,
    "v2_Annotations_Train_mscoco.zip": VQA_URL,
    "v2_Annotations_Val_mscoco.zip": VQA_URL,
    "train2014.zip": IMAGES_URL,
    "val2014.zip": IMAGES_URL,
    "test2015.zip": IMAGES_URL,
}
CHUNK = 1 << 20


def _remote_size(url: str) -> int | None:
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=60) as response:
        length = response.headers.get("Content-Length")
        return int(length) if length is not None else None


def fetch(url: str, target: Path, log: Callable[[str], None] = print) -> Path:
    """Download ``url`` to ``target``, resuming a ``.part`` file, and check its size."""
    part = target.with_name(target.name + ".part")
    try:
        size = _remote_size(url)
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        if size is None or have < size:
            request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
            with urllib.request.urlopen(request, timeout=60) as response:
                if have and response.status != 206:  # the server ignored the range: start again
                    have = 0
                mode = "ab" if have else "wb"
                bar = progress(total=size, desc=target.name, unit="B")
                bar.unit_scale = True
                bar.update(have)
                with part.open(mode) as f:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
                bar.close()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise VQAError(f"could not download {url} ({reason}); run `vqa download` again to resume "
                       f"({part.name} keeps what arrived).") from None
    got = part.stat().st_size
    if size is not None and got != size:
        raise VQAError(f"{part} has {got} bytes but {url} has {size}; run `vqa download` again to resume.")
    os.replace(part, target)
    return target


def _kind(path: Path) -> str:
    return "a folder" if path.is_dir() else "a file" if path.is_file() else "something other than a file or folder"


def _plan_merge(archive: Path, staging: Path, out_dir: Path, root: Path | None = None) -> list[tuple[Path, Path]]:
    """The moves that merge ``staging`` into ``out_dir``, refusing any entry that would replace what is there.

    A folder merges into an existing folder; a file whose target holds the same bytes (the same
    archive unpacked again) is left as it is.

    Raises:
        VQAError: an entry whose target exists as another type, or as a file with other content.
    """
    root = root or staging
    moves = []
    for item in sorted(staging.iterdir()):
        target = out_dir / item.name
        entry = item.relative_to(root)
        if not os.path.lexists(target):
            moves.append((item, target))
        elif item.is_dir() and target.is_dir():
            moves += _plan_merge(archive, item, target, root)
        elif _kind(item) != _kind(target):
            raise VQAError(f"{archive} holds {_kind(item)} {entry} where {target} is {_kind(target)}; move "
                           f"{target} away and run `vqa download` again (nothing was unpacked).")
        elif not filecmp.cmp(item, target, shallow=False):
            raise VQAError(f"{archive} holds {entry} but {target} already exists with other content; move it "
                           "away and run `vqa download` again (nothing was unpacked).")
    return moves


def unpack(archive: Path, out_dir: Path) -> None:
    """Unzip ``archive`` into ``out_dir`` through a temporary folder, so no half-unpacked file is left.

    Merges into folders already there and never replaces or deletes what ``out_dir`` holds: a
    conflicting entry is refused before anything moves, and the temporary folder is always removed.
    """
    staging = out_dir / f".{archive.stem}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(staging)
        except zipfile.BadZipFile:
            archive.unlink()
            raise VQAError(f"{archive} is not a valid zip (corrupt download, now removed); "
                           "run `vqa download` again.") from None
        if staging.is_dir():
            for source, target in _plan_merge(archive, staging, out_dir):
                os.replace(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(out_dir: str | Path = "data/raw", base_url: str | None = None, parts: Sequence[str] | None = None,
             keep_zips: bool = False, log: Callable[[str], None] = print) -> list[Path]:
    """Fetch and unpack the VQA v2 / COCO zips into ``out_dir``; idempotent and resumable.

    Args:
        out_dir: where the official layout goes (data/raw).
        base_url: fetch every file from this mirror instead of the official hosts.
        parts: a subset of the file names in ``FILES``.
        keep_zips: keep the zips after unpacking.

    Returns:
        The zips that were unpacked by this call.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(parts) if parts else list(FILES)
    unknown = [name for name in names if name not in FILES]
    if unknown:
        raise VQAError(f"--parts {', '.join(unknown)} unknown; choose from {', '.join(FILES)}.")
    unpacked = []
    for name in names:
        marker = out_dir / f".{name}.done"
        if marker.exists():
            log(f"{name}: already unpacked")
            continue
        archive = out_dir / name
        if not archive.exists():
            url = (base_url.rstrip("/") + "/" if base_url else FILES[name]) + name
            log(f"{name}: downloading {url}")
            fetch(url, archive, log)
        log(f"{name}: unpacking")
        unpack(archive, out_dir)
        marker.write_text("unpacked\n")
        if not keep_zips:
            archive.unlink()
        unpacked.append(archive)
    return unpacked
