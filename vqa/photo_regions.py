"""A photo's detector regions from the user's own region file: what ``vqa predict --regions`` and ``vqa serve`` read.

A run on detector regions (``data.features`` "regions", or "region-mean" for a global model)
reads boxes an object detector found; this project runs none, so the user brings the photo's
boxes in a file of any layout ``vqa.region_import`` reads: a bottom-up-attention TSV, an HDF5
file (fixed or adaptive), an MCAN folder of .npz files or one .npz file. The file is imported
exactly as ``vqa preprocess --regions`` imports it (layout detection, the same refusal of bad
rows, ``vqa.regions.check_row``) into a temporary region file, read back with
``vqa.regions.RegionReader`` and deleted.

Which image of the file a photo is: the image id the user names (``--region-id``, a questions
file line's ``"region_id"``), else the file's only image, else the id in the photo's file name
(a COCO name, ``vqa.layout.parse_image_filename``, or the last digits of its stem).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vqa import layout, region_import, regions, visual
from vqa.errors import VQAError
from vqa.names import IMAGE_FEATURES, REGION_FEATURES, REGION_GEOMETRY, REGION_MASK

REGION_SOURCES = ("regions", "region-mean")  # the vqa.visual sources read from a region file
SINGLE_NPZ_SPLIT = "predict"  # the split a lone .npz file is imported as (its name carries no split)


@dataclass(frozen=True)
class PhotoRegions:
    """One image's detector regions, as its region file holds them.

    Attributes:
        image_id: the image's id in the file.
        features: float32 (K, D).
        boxes: float32 (K, 4) x1, y1, x2, y2 in the pixels of the image the file describes.
        size: (width, height) of that image, as the file records it.
    """

    image_id: int
    features: np.ndarray
    boxes: np.ndarray
    size: tuple[float, float]

    def boxes_in(self, width: float, height: float) -> np.ndarray:
        """float32 (K, 4): the boxes scaled from the recorded size to a photo of ``width`` x ``height`` pixels."""
        scale = np.array([width / self.size[0], height / self.size[1]] * 2, np.float32)
        return (self.boxes * scale).astype(np.float32)


@dataclass(frozen=True)
class RegionRequest:
    """Which image of a region file one question's photo is.

    Attributes:
        photo: the photo's file name (its image id may be in it), or None.
        region_id: the image id the user named, or None.
        pick: how the user names an image id, for messages (e.g. "pass --region-id N").
    """

    photo: str | None
    region_id: int | None = None
    pick: str = "pass --region-id N"


def reads_detector_regions(features: str) -> bool:
    """Whether a run's source (``RunInfo.features``) is read from a region file, so a photo needs one."""
    return features in REGION_SOURCES


def id_in_name(name: str | None) -> int | None:
    """The image id in a photo's file name: a COCO name's id, else the last digits of its stem, else None."""
    if not name:
        return None
    parsed = layout.parse_image_filename(Path(name).name)
    if parsed is not None:
        return parsed[1]
    digits = re.findall(r"\d+", Path(name).stem)
    return int(digits[-1]) if digits else None


def photo_size(photo: str | Path) -> tuple[int, int]:
    """(width, height) of a photo, from its header (the boxes are scaled to it)."""
    from PIL import Image

    with Image.open(photo) as image:
        return image.size


MIN_BOX_SLOTS = 16


def box_slots(count: int) -> int:
    """The boxes a batch of photos is padded to: the next power of two, at least ``MIN_BOX_SLOTS``.

    A model traces once per input shape; detectors give 10-100 boxes, so a server padding to
    the exact count would retrace for most new photos, and with these slots traces four times
    at most. The mask gives padded boxes no weight, so the answers do not change.
    """
    return max(MIN_BOX_SLOTS, 1 << (max(count, 1) - 1).bit_length())


def model_inputs(found: Sequence[PhotoRegions], kind: str) -> dict[str, np.ndarray]:
    """The model inputs of a batch of images' regions, as evaluate reads them from a split's region file.

    Args:
        found: one ``PhotoRegions`` per question.
        kind: the run's input kind: "regions" (features, geometry and mask, padded to ``box_slots`` of
            the batch's largest box count) or "vector" (each image's mean over its boxes).
    """
    if kind == "vector":
        return {IMAGE_FEATURES: np.stack([item.features.mean(axis=0, dtype=np.float32) for item in found])}
    count = box_slots(max([1, *(len(item.boxes) for item in found)]))
    dim = found[0].features.shape[1] if found else 1
    features = np.zeros((len(found), count, dim), np.float32)
    boxes = np.zeros((len(found), count, 4), np.float32)
    mask = np.zeros((len(found), count), bool)
    for row, item in enumerate(found):
        features[row, :len(item.boxes)], boxes[row, :len(item.boxes)] = item.features, item.boxes
        mask[row, :len(item.boxes)] = True
    sizes = np.array([item.size for item in found], np.float32).reshape(-1, 2)
    return {REGION_FEATURES: features, REGION_GEOMETRY: regions.geometry(boxes, sizes, mask),
            REGION_MASK: mask.astype(np.float32)}


def read_photo_regions(path: str | Path, requests: Sequence[RegionRequest], label: str | None = None,
                       feature_dim: int | None = None) -> list[PhotoRegions]:
    """The regions of each request's image, from a region file in any layout ``vqa.region_import`` reads.

    Args:
        path: a TSV file, folder of parts or glob; an HDF5 file (its id map beside it, as for
            ``vqa preprocess --regions``; none is needed when it holds one image); an npz folder;
            one .npz file.
        requests: one per question.
        label: what the sentences call the file (default "--regions PATH").
        feature_dim: the D the run reads; a file of another D is refused.

    Returns:
        One ``PhotoRegions`` per request, in order.

    Raises:
        VQAError: one sentence: the file is missing, unreadable or in no known layout; which image
            a photo is cannot be told; the file has no usable regions for it (and why); its D differs.
    """
    path = Path(path)
    label = label or f"--regions {path}"
    with tempfile.TemporaryDirectory(prefix="vqa-regions-") as folder:
        source, split, id_map, held = _prepared(path, Path(folder), requests, label)
        ids = [_image_id(request, held, label) for request in requests]
        out = regions.region_path(folder)
        try:
            result = region_import.import_regions(source, sorted(set(ids)), out, split, id_map=id_map,
                                                  dtype="float32", log=lambda line: None, allow_empty=True,
                                                  show_progress=False)
        except VQAError as error:  # a lone .npz file is read from its copy: name the user's file
            raise VQAError(str(error).replace(str(source), str(path))) from None
        imported = {int(image_id) for image_id in result.image_ids}
        for request, image_id in zip(requests, ids):
            if image_id not in imported:
                reason = result.skipped.get(image_id, f"not in {path.name}")
                if request.region_id is None and held[1:]:
                    reason = f"the id in the name {request.photo}: {reason}"
                raise VQAError(f"{label} has no usable regions for image {image_id} ({reason}); "
                               f"{request.pick} with an image it holds, or pass the region file of this photo.")
        with regions.RegionReader(out) as reader:
            if feature_dim is not None and reader.feature_dim != feature_dim:
                raise VQAError(f"{label} holds {reader.feature_dim}-d box features but the run reads "
                               f"{feature_dim}-d ones; pass regions from the detector of its training features.")
            unique = sorted(set(ids))
            batch = reader.read(visual.rows_for(np.array(unique), reader.image_ids))
    found = {image_id: PhotoRegions(image_id, batch.features[row][batch.mask[row]].astype(np.float32),
                                    batch.boxes[row][batch.mask[row]], tuple(float(v) for v in batch.sizes[row]))
             for row, image_id in enumerate(unique)}
    return [found[image_id] for image_id in ids]


def regions_for_questions(run_dir: Path, run, questions: Sequence, regions_file: Path | None,
                          region_id: int | None) -> list[PhotoRegions]:
    """``vqa predict --regions FILE [--region-id N]``: each question's regions, read before any model loads.

    Args:
        run_dir, run: the run and its ``vqa.run_folder.RunInfo``.
        questions: the ``vqa.questions.Question`` objects; a line's ``region_id`` wins over ``region_id``.
        regions_file: the region file, or None.
        region_id: ``--region-id``, or None.

    Raises:
        VQAError: ``--region-id`` without ``--regions``; ``--regions`` for a run that reads no detector
            regions, or without a photo; anything ``read_photo_regions`` refuses.
    """
    if regions_file is None:
        raise VQAError(f"--region-id {region_id} names an image of a region file; pass the file with --regions FILE.")
    if not reads_detector_regions(run.features):
        reads = "no image" if run.features == "none" else f"{run.features} image features"
        raise VQAError(f"--regions {regions_file} gives detector boxes, but {run_dir} is a {run.model} run on "
                       f"{reads}, which does not read detector regions; leave --regions out.")
    missing = next((item for item in questions if item.image is None), None)
    if missing is not None:
        what = "--image" if missing.source == "--question" else f'an "image" on {missing.source}'
        raise VQAError(f"--regions {regions_file} gives the boxes of a photo; pass the photo too ({what}), "
                       "which the boxes are drawn over.")
    requests = [RegionRequest(item.image.name, region_id if item.region_id is None else item.region_id,
                              "pass --region-id N" if item.source == "--question"
                              else f'add "region_id": N to {item.source}') for item in questions]
    return read_photo_regions(regions_file, requests, feature_dim=int(run.feature_dim) or None)


def _prepared(path: Path, folder: Path, requests: Sequence[RegionRequest],
              label: str) -> tuple[Path, str, Path | None, list[int]]:
    """(the source to import, its split, an id map or None, the first two images it holds)."""
    if path.is_file() and path.suffix.lower() == ".npz":
        # One image: imported as an npz folder of that one file, named as MCAN names them.
        named = layout.parse_image_filename(path.name)
        image_id = next((r.region_id for r in requests if r.region_id is not None), named[1] if named else None)
        if image_id is None:  # MCAN names the file after its image; else the photo's name may carry the id
            image_id = next((i for i in (id_in_name(r.photo) for r in requests) if i is not None), 0)
        copy = folder / "npz" / (layout.image_filename(SINGLE_NPZ_SPLIT, image_id) + ".npz")
        copy.parent.mkdir()
        shutil.copyfile(path, copy)
        return copy.parent, SINGLE_NPZ_SPLIT, None, [image_id]
    kind = region_import.detect_layout(path)
    split, id_map = SINGLE_NPZ_SPLIT, None
    if kind == "npz":
        names = [layout.parse_image_filename(child.name) for child in sorted(path.iterdir())
                 if child.name.endswith(".npz")]
        split = next((name[0] for name in names if name is not None), None)
        if split is None:
            raise VQAError(f"{label} is a folder of .npz files none of which is named after its COCO image "
                           "as MCAN names them (the image file name + .npz); rename them, or pass one .npz file.")
    elif kind.startswith("hdf5"):
        split = path.stem  # train36.hdf5: its id map is train36_imgid2idx.pkl beside it
        id_map = _lone_image_map(path, folder, requests)
    held = region_import.source_image_ids(path, split, id_map, limit=2)
    if not held:
        raise VQAError(f"{label} holds no image's regions (no line or file names an image id); pass a region "
                       "file of bottom-up-attention features.")
    return path, split, id_map, held


def _lone_image_map(path: Path, folder: Path, requests: Sequence[RegionRequest]) -> Path | None:
    """For an HDF5 file of one image, an id map of it (one upload carries no map); None otherwise."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            count = len(f["pos_boxes"]) if "pos_boxes" in f else f["image_features"].shape[0]
    except (OSError, KeyError, TypeError, ValueError):
        return None  # the import says what is wrong with the file
    beside = region_import.ID_MAP_SUFFIXES
    if count != 1 or any(p.suffix.lower() in beside for p in path.parent.glob("*imgid2idx*")):
        return None
    image_id = next((r.region_id for r in requests if r.region_id is not None), None)
    if image_id is None:  # the file names none: the photo's name may carry it
        image_id = next((i for i in (id_in_name(r.photo) for r in requests) if i is not None), 0)
    id_map = folder / "lone_image_map.json"
    id_map.write_text(f'{{"{image_id}": 0}}')
    return id_map


def _image_id(request: RegionRequest, held: list[int], label: str) -> int:
    """The image of the file a request's photo is: named, the file's only one, or in the photo's name."""
    if request.region_id is not None:
        return request.region_id
    if len(held) == 1:
        return held[0]
    named = id_in_name(request.photo)
    if named is None:
        photo = f"the name of {request.photo}" if request.photo else "the request"
        raise VQAError(f"{label} holds the regions of several images and {photo} has no image id to pick one "
                       f"by; {request.pick} with the photo's COCO image id.")
    return named
