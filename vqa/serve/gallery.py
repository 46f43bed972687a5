"""The run's own images that the page offers to pick: a table from image id to file, built on the server.

The images are those of the run's validation split (its config's ``data.val_split``, else
val2014), when the preprocessed folder it was trained on is still there (the run description
names it) and the image files are still where preprocessing read them. A client names an
image only by its id; the id is looked up in this table, never joined to a path, so no
request can reach any other file. Each image keeps a few of the split's own questions about
it, which the page shows as suggestions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from vqa.errors import VQAError

SUGGESTIONS = 3  # dataset questions kept per image
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}

log = logging.getLogger("vqa.serve")


@dataclass(frozen=True)
class RunImage:
    """One of the run's images: its id (a string), split, file and a few of the split's questions about it."""

    id: str
    split: str
    path: Path
    questions: tuple[str, ...]

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(self.path.suffix.lower(), "application/octet-stream")

    def to_json(self) -> dict:
        return {"id": self.id, "split": self.split, "questions": list(self.questions),
                "url": f"/api/images/{self.id}"}


class Gallery:
    """The run's images by id, in the split's order; ``note`` says why there are none, when there are none."""

    def __init__(self, images: list[RunImage], note: str = ""):
        self._by_id = {image.id: image for image in images}
        self.images = list(self._by_id.values())
        self.note = note

    def __len__(self) -> int:
        return len(self.images)

    def get(self, image_id: str) -> RunImage | None:
        return self._by_id.get(image_id)

    def page(self, offset: int = 0, limit: int = 100) -> list[RunImage]:
        return self.images[offset:offset + limit]


def run_gallery(run_dir: str | Path) -> Gallery:
    """The validation images of the run's preprocessed folder that exist on disk (none, with a note, if not)."""
    from vqa.config import load_config
    from vqa.layout import image_path
    from vqa.manifest import read_manifest
    from vqa.run_folder import read_run_info
    from vqa.split_files import read_text_columns

    try:
        info = read_run_info(run_dir)
        data_dir = Path(info.data_dir) if info is not None else None
        manifest = read_manifest(data_dir) if data_dir is not None and data_dir.is_dir() else None
        if manifest is None:
            return Gallery([], f"the run's preprocessed folder {data_dir} is not here, so only uploads can be asked "
                               "about")
        wanted = load_config(run_dir).data.val_split
        split = next((name for name in (wanted, "val2014") if name and name in manifest.splits), None)
        if split is None:
            return Gallery([], f"{data_dir} has no validation split, so only uploads can be asked about")
        record = manifest.splits[split]
        columns = read_text_columns(data_dir / split)
    except VQAError as error:
        log.warning("no run images to pick: %s", error)
        return Gallery([], f"the run's images cannot be listed ({error})")
    images_dir = Path(record.images_dir or data_dir)
    questions: dict[str, list[str]] = {}
    for image_id, question in zip(columns.image_ids, columns.questions):
        if image_id.strip().isdigit():
            questions.setdefault(str(int(image_id)), []).append(question)
    images = []
    for image_id, asked in questions.items():
        path = image_path(images_dir, split, int(image_id))
        if path.is_file():
            images.append(RunImage(image_id, split, path, tuple(dict.fromkeys(asked))[:SUGGESTIONS]))
    note = "" if images else f"the {split} images are not in {images_dir}, so only uploads can be asked about"
    return Gallery(images, note)
