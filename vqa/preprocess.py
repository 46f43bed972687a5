"""Official VQA v2 JSON + COCO images -> everything training and evaluation read.

Reads, under the preprocess config's ``data_dir``, each split's official files as
``vqa.layout`` names them (``vqa.sources`` checks and joins them) and its images.
Writes, under OUT, through each file's owner:
    the manifest (``vqa.manifest``): settings, backbone and what each split holds; a split
        is listed only once all its files are written
    the answer vocabulary (``vqa.answers``, from the first split, official normalisation)
    the question vocabulary, its word vectors and the tokenizer (``vqa.text``, first split)
    the image backbone's description (``vqa.backbone``), so predict can run it on new images
    per split: the six text files and the question arrays (``vqa.split_files``) and, per
        readable image, one image-feature row (``vqa.features``, ``features`` fc7 or both)
        and/or one grid (``vqa.grid_features``, ``features`` grid or both, or imported),
        extracted in one pass (``vqa.extraction``)

Every file is written atomically and feature extraction resumes where a killed run
stopped, so running the same command again after any interruption finishes the job.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np

from vqa import answers as answers_lib
from vqa import layout, manifest as manifest_lib, split_files
from vqa import text as text_lib
from vqa.config import PreprocessConfig, PreprocessSettings
from vqa.errors import VQAError
from vqa.locks import folder_lock
from vqa.manifest import Manifest, SplitRecord
from vqa.paths import check_outputs
from vqa.preprocess_options import check_config, extracted
from vqa.sources import SHOWN_IDS, SplitSource, load_split

# Settings that decide what the files of OUT mean: adding a split with another value would mix two datasets.
FIXED_SETTINGS = ("max_question_length", "top_answers")
_OUTPUTS = {"fc7": ("features",), "grid": ("grid",), "both": ("features", "grid"), "none": ()}
_WHAT = {"features": "image features", "grid": "grid features"}


class Preprocessor:
    """Runs the steps for each split, reusing the first split's vocabularies for later ones."""

    def __init__(self, config: PreprocessConfig, out_dir: Path, log: Callable[[str], None]):
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.images_dir = Path(config.images_dir) if config.images_dir else self.data_dir
        self.features_mat = Path(config.features_mat) if config.features_mat else None
        self.out_dir = out_dir
        self.log = log
        self.manifest = self._read_manifest()
        self._nlp = None
        self._backbone = None

    def _read_manifest(self) -> Manifest:
        manifest = manifest_lib.read_manifest(self.out_dir)
        if manifest is None:
            return Manifest()
        for key in FIXED_SETTINGS:
            recorded, wanted = getattr(manifest, key), getattr(self.config, key)
            if recorded is not None and recorded != wanted:
                option = "--" + key.replace("_", "-")
                raise VQAError(
                    f"{self.out_dir} was preprocessed with {option} {recorded}; pass the same value "
                    f"to add splits to it, or use a new --out folder."
                )
        return manifest

    def _save(self, **changes) -> None:
        self.manifest = self.manifest.replace(**changes)
        manifest_lib.write_manifest(self.out_dir, self.manifest)

    # -- vocabularies ---------------------------------------------------------------------------------------

    @property
    def nlp(self):
        if self._nlp is None:
            self.log(f"Loading spaCy pipeline {self.config.vectors} (tokenizer and vectors only)")
            self._nlp = text_lib.load_pipeline(self.config.vectors)
        return self._nlp

    def _vocabularies_exist(self) -> bool:
        return (self.manifest.first_split is not None and text_lib.has_vocabularies(self.out_dir)
                and answers_lib.answers_path(self.out_dir).is_file())

    def build_vocabularies(self, source: SplitSource, tokens: list[list[str]]) -> None:
        """Answer and word vocabularies, the embedding matrix and the tokenizer, from the first split."""
        if not source.has_annotations:
            raise VQAError(
                f"{source.split} has no annotations, so it cannot define the answer vocabulary; list a split "
                f"with annotations first in --splits (e.g. train2014,{source.split})."
            )
        answers, counts = answers_lib.answer_vocabulary(list(source.annotations), self.config.top_answers)
        answers_lib.write_answers(self.out_dir, answers, counts)
        words = text_lib.build_vocabulary(tokens)
        matrix, oov = text_lib.embedding_matrix(self.nlp, words)
        text_lib.write_embeddings(self.out_dir, matrix)
        text_lib.write_vocabulary(self.out_dir, words)
        text_lib.write_tokenizer(self.out_dir, self.nlp)
        self._save(first_split=source.split, vectors=self.config.vectors, lang=self.nlp.lang,
                   max_question_length=self.config.max_question_length, top_answers=self.config.top_answers,
                   vocabulary_size=len(words), embedding_dim=int(matrix.shape[1]), oov_words=len(oov),
                   oov_examples=tuple(oov[:20]), num_answers=len(answers))
        self.log(
            f"Vocabularies from {source.split}: {len(answers)} answers, {len(words)} words "
            f"({len(oov)} without a vector in {self.config.vectors}), {matrix.shape[1]}-d vectors"
        )

    # -- image features -------------------------------------------------------------------------------------

    @property
    def backbone(self):
        if self._backbone is None:
            from vqa import backbone as backbone_lib

            self._backbone = config_backbone(self.config)
            spec = self._backbone.spec
            recorded = self.manifest.backbone
            # Compared as specs: a record from an older vqa lacks fields that do not change the features.
            if recorded and not backbone_lib.same_features(backbone_lib.BackboneSpec.from_dict(recorded), spec):
                grid = f", grid layer {recorded.get('grid_layer')}" if recorded.get("grid_layer") else ", no grid"
                raise VQAError(
                    f"{self.out_dir} holds features from another backbone ({recorded.get('kind')}, weights "
                    f"{recorded.get('weights')}, image size {recorded.get('image_size')}{grid}); pass the same "
                    "--weights, --features, --image-size and --grid-layer, or use a new --out folder."
                )
            keras_source = Path(self.config.weights) if spec.kind == "keras" else None
            backbone_lib.write_backbone(self.out_dir, spec, keras_source=keras_source)
            self._save(backbone=spec.to_dict(), feature_dim=int(self._backbone.feature_dim))
        return self._backbone

    def output_paths(self, out_split: Path) -> dict[str, Path]:
        """The files extraction writes into a split folder: "features" and/or "grid", as ``features`` says."""
        from vqa import features as features_lib
        from vqa import grid_features

        paths = {"features": features_lib.features_path(out_split), "grid": grid_features.grid_path(out_split)}
        return {name: paths[name] for name in _OUTPUTS[extracted(self.config)]}

    def image_features(self, source: SplitSource, out_split: Path) -> dict:
        """The split's image features and/or grids (output -> ``ExtractionResult``): imported, merged or extracted."""
        from vqa import backbone as backbone_lib
        from vqa import extraction, matfile
        from vqa import features as features_lib

        image_ids = list(dict.fromkeys(q["image_id"] for q in source.questions))
        out_paths = self.output_paths(out_split)
        if self.features_mat:
            out_path = features_lib.features_path(out_split)
            result = matfile.import_mat_features(
                self.features_mat, Path(self.config.id_map), image_ids, out_path, dtype=self.config.feature_dtype)
            # Imported features come with no model that could describe a new image.
            spec = backbone_lib.BackboneSpec.for_mat(self.features_mat.resolve(),
                                                     features_lib.read_feature_spec(out_path).feature_dim)
            backbone_lib.write_backbone(self.out_dir, spec)
            self._save(backbone=spec.to_dict(), feature_dim=spec.feature_dim)
            return {"features": result}
        paths = [(image_id, layout.image_path(self.images_dir, source.split, image_id)) for image_id in image_ids]
        results = {}
        for name, out_path in out_paths.items():
            shards = _shard_count(out_path)
            if shards and not out_path.exists():
                self.log(f"{source.split}: merging the {_WHAT[name]} of {shards} shards")
                results[name] = extraction.merge_shards(paths, out_path, shards, backbone=self.backbone.spec)
        rest = {name: path for name, path in out_paths.items() if name not in results}
        if rest:
            self.log(f"{source.split}: {' and '.join(_WHAT[name] for name in rest)} for {len(paths)} images "
                     f"({_describe(self.backbone)}, weights {self.config.weights})")
            results.update(extraction.extract_outputs(paths, self.backbone, rest, batch_size=self.config.batch_size,
                                                      dtype=self.config.feature_dtype))
        return results

    def import_grids(self, source: SplitSource, out_split: Path):
        """The split's grid features from a pytorch-vqa file (``grid_features``), as an ``ExtractionResult``."""
        from vqa import grid_features, grid_import

        image_ids = list(dict.fromkeys(q["image_id"] for q in source.questions))
        result = grid_import.import_pytorch_vqa(self.config.grid_features, image_ids,
                                                grid_features.grid_path(out_split), dtype=self.config.feature_dtype,
                                                log=self.log)
        if result.skipped:
            reasons = "; ".join(f"{i}: {result.skipped[i]}" for i in sorted(result.skipped)[:SHOWN_IDS])
            self.log(f"{source.split}: {len(result.skipped)} images have no usable grid in "
                     f"{self.config.grid_features} ({reasons}{'; ...' if len(result.skipped) > SHOWN_IDS else ''}); "
                     "attention runs leave their questions out of training")
        return result

    def import_regions(self, source: SplitSource, out_split: Path):
        """The split's region features from ``--regions`` (any layout of ``vqa.region_import``), as an
        ``ExtractionResult``; images without regions are counted and named."""
        from vqa import region_import, regions

        image_ids = list(dict.fromkeys(q["image_id"] for q in source.questions))
        result = region_import.import_regions(
            self.config.regions, image_ids, regions.region_path(out_split), source.split,
            id_map=self.config.id_map or None, dtype=self.config.feature_dtype, log=self.log)
        if result.skipped:
            reasons = "; ".join(f"{i}: {result.skipped[i]}" for i in sorted(result.skipped)[:SHOWN_IDS])
            self.log(f"{source.split}: {len(result.skipped)} images have no usable regions in {self.config.regions} "
                     f"({reasons}{'; ...' if len(result.skipped) > SHOWN_IDS else ''}); runs on regions leave "
                     "their questions out of training")
        return result

    def extract_shard(self, split: str, image_ids: list[int], index: int, count: int) -> None:
        """Only the image features and/or grids of shard ``index`` of ``count`` of ``split``'s images (in
        question order); nothing else of OUT."""
        from vqa import extraction

        paths = [(image_id, layout.image_path(self.images_dir, split, image_id)) for image_id in image_ids]
        backbone = config_backbone(self.config)
        out_split = self.out_dir / split
        out_split.mkdir(parents=True, exist_ok=True)
        out_paths = self.output_paths(out_split)
        self.log(f"{split}: {' and '.join(_WHAT[name] for name in out_paths)} of shard {index}/{count} "
                 f"({_describe(backbone)}, weights {self.config.weights})")
        extraction.extract_outputs(paths, backbone, out_paths, batch_size=self.config.batch_size,
                                   dtype=self.config.feature_dtype, shard=(index, count))

    # -- one split ------------------------------------------------------------------------------------------

    def run_split(self, split: str, defines_vocabulary: bool) -> SplitRecord:
        started = time.monotonic()
        source = load_split(self.data_dir, split, self.config.limit or None)
        for note in source.notes:
            self.log(note)
        if not self.features_mat and extracted(self.config) != "none":
            _ = self.backbone  # a missing or wrong backbone stops the run now, not after the text steps
        out_split = self.out_dir / split
        out_split.mkdir(parents=True, exist_ok=True)
        split_files.write_text_columns(out_split, text_columns(source))

        tokens = text_lib.tokenize(self.nlp, [q["question"] for q in source.questions])
        if defines_vocabulary:
            self.build_vocabularies(source, tokens)
        word_index = text_lib.word_index(text_lib.read_vocabulary(self.out_dir))
        token_ids, truncated = text_lib.token_ids(tokens, word_index, self.config.max_question_length)
        answer_index = answers_lib.build_answer_index(answers_lib.read_answers(self.out_dir))
        mc_index, score_indices, score_values = answers_lib.answer_targets(
            source.annotations, answer_index, split_files.MAX_ANSWERS)

        results = self.image_features(source, out_split)
        if self.config.grid_features and "grid" not in results:
            results["grid"] = self.import_grids(source, out_split)
        if self.config.regions:
            results["regions"] = self.import_regions(source, out_split)
        grid_images = len(results["grid"].image_ids) if "grid" in results else 0
        # The questions' image_index: rows of the first input written (fc7, grid, regions). Each run
        # looks its own input's rows up by image id (vqa.visual.rows_for), so this is for the counts.
        result = results.get("features") or results.get("grid") or results["regions"]
        row_of = {int(image_id): row for row, image_id in enumerate(result.image_ids)}
        image_index = np.array([row_of.get(int(q["image_id"]), -1) for q in source.questions], np.int32)
        skipped_ids = sorted(result.skipped)
        if skipped_ids:
            reasons = "; ".join(f"{i}: {result.skipped[i]}" for i in skipped_ids[:SHOWN_IDS])
            self.log(
                f"{split}: {len(skipped_ids)} images missing or unreadable ({reasons}"
                f"{'; ...' if len(skipped_ids) > SHOWN_IDS else ''}); their "
                f"{int(np.sum(image_index < 0))} questions stay in the text files but are left out of training"
            )
        split_files.write_questions(out_split, split_files.QuestionArrays(
            split=split, question_ids=np.array([q["question_id"] for q in source.questions], np.int64),
            image_ids=np.array([q["image_id"] for q in source.questions], np.int64), token_ids=token_ids,
            image_index=image_index, answer_index=mc_index, score_indices=score_indices,
            score_values=score_values, has_annotations=source.has_annotations))

        covered = (float(np.mean(score_values.max(axis=1) > 0))
                   if source.has_annotations and len(mc_index) else None)
        record = SplitRecord(
            questions_file=str(source.questions_file.resolve()),
            annotations_file=str(source.annotations_file.resolve()) if source.annotations_file else None,
            images_dir=str(self.images_dir.resolve()),
            num_questions=len(source.questions), num_images=int(len(result.image_ids)), num_grid_images=grid_images,
            num_region_images=int(len(results["regions"].image_ids)) if "regions" in results else 0,
            num_missing_images=len(skipped_ids), missing_image_ids=tuple(int(i) for i in skipped_ids[:20]),
            questions_without_image=int(np.sum(image_index < 0)),
            unknown_tokens=int(np.sum(token_ids == text_lib.UNK_ID)), truncated_questions=int(truncated),
            answer_coverage=covered, has_annotations=source.has_annotations,
            skipped_questions=source.skipped_questions, skipped_examples=tuple(source.skipped[:20]),
            seconds=round(time.monotonic() - started, 1),
        )
        self.manifest = self.manifest.with_split(split, record)
        self._save(data_dir=str(self.data_dir.resolve()))
        return record

    def run(self) -> Manifest:
        splits = self.config.split_list
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Recorded with the first file this run writes, not before: a run that fails its checks leaves no manifest.
        self.manifest = self.manifest.replace(config=dataclasses.asdict(self.config))
        reuse = self._vocabularies_exist() and self.manifest.first_split not in splits[:1]
        if reuse:
            self.log(f"Reusing the vocabularies of {self.manifest.first_split} in {self.out_dir}")
        for position, split in enumerate(splits):
            self.run_split(split, defines_vocabulary=position == 0 and not reuse)
        return self.manifest


def config_backbone(config: PreprocessConfig):
    """The ``vqa.backbone.Backbone`` the preprocess config asks for: weights, seed, image size and outputs."""
    from vqa import backbone as backbone_lib

    features = extracted(config)
    grids = features in ("grid", "both")
    return backbone_lib.load_backbone(config.weights, seed=config.seed, image_size=config.image_size or None,
                                      grid_layer=(config.grid_layer or backbone_lib.AUTO_GRID_LAYER) if grids else None,
                                      features=features != "grid")


def _describe(backbone) -> str:
    """E.g. "vgg16 224 x 224, grid block5_pool 7 x 7 x 512"."""
    height, width = backbone.image_size
    grid = backbone.grid_shape
    return (f"{backbone.spec.kind} {height} x {width}"
            + (f", grid {backbone.spec.grid_layer} {' x '.join(map(str, grid))}" if grid else ""))


def text_columns(source: SplitSource) -> split_files.TextColumns:
    """The seed pipeline's text files of a split, in question-file order."""
    return split_files.TextColumns(
        questions=[q["question"] for q in source.questions],
        question_ids=[str(q["question_id"]) for q in source.questions],
        image_ids=[str(q["image_id"]) for q in source.questions],
        answers=[a["multiple_choice_answer"] if a else "" for a in source.annotations],
        answer_types=[str(a.get("answer_type") or "") if a else "" for a in source.annotations],
        question_types=[str(a.get("question_type") or "") if a else "" for a in source.annotations],
    )


def _shard_count(out_path: Path) -> int:
    """How many shards the shard files beside ``out_path`` say the extraction was split into (0: none)."""
    from vqa import features as features_lib

    counts = features_lib.shard_counts(out_path)
    if len(counts) > 1:
        raise VQAError(f"{out_path.parent} holds shards of {' and '.join(map(str, sorted(counts)))}-way splits of one "
                       "extraction; delete the ones you no longer want and run again.")
    return counts.pop() if counts else 0


def _check_shard_count(shard: tuple[int, int], split: str, num_images: int, batch_size: int) -> None:
    """Refuse more shards than the split has batches of images (``vqa.shards.check_shard``)."""
    from vqa.shards import batch_count

    batches = batch_count(num_images, batch_size)
    if shard[1] > batches:
        raise VQAError(f"--shard {shard[0]}/{shard[1]} asks for more shards than the {batches} batches of "
                       f"--batch-size {batch_size} that {split}'s {num_images} images make; pass a COUNT of at "
                       f"most {batches}.")


def parse_shard(shard: str) -> tuple[int, int] | None:
    """``"INDEX/COUNT"`` (0-based INDEX) as a pair, None for ""."""
    if not shard:
        return None
    index, sep, count = shard.partition("/")
    try:
        pair = (int(index), int(count)) if sep else None
    except ValueError:
        pair = None
    if pair is None or not 0 <= pair[0] < pair[1]:
        raise VQAError(f"--shard {shard} is not INDEX/COUNT with 0 <= INDEX < COUNT; pass e.g. 0/3, 1/3 and 2/3 "
                       "to three machines, then run once without --shard to merge.")
    return pair


def preprocess(settings: PreprocessSettings | PreprocessConfig, out_dir: str | Path,
               log: Callable[[str], None] = print) -> Manifest:
    """Preprocess the official VQA v2 files of the config's splits into ``out_dir``.

    The first split defines the answer and word vocabularies; later splits (and later runs
    into the same ``out_dir``) reuse them. Returns the manifest written into OUT.
    """
    config = settings.preprocess if isinstance(settings, PreprocessSettings) else settings
    check_config(config)
    check_outputs({"--data-dir": config.data_dir, "--images": config.images_dir or None}, {"--out": out_dir})
    shard = parse_shard(config.shard)
    if shard is not None:
        # Shards of one extraction run at once (on many machines): each locks only its own work file.
        if config.features_mat:
            raise VQAError("--shard splits feature extraction from images; --features-mat imports instead: drop one.")
        preprocessor = Preprocessor(config, Path(out_dir), log)
        images = {split: list(dict.fromkeys(q["image_id"] for q in load_split(
            preprocessor.data_dir, split, config.limit or None).questions)) for split in config.split_list}
        for split, image_ids in images.items():  # every split checked before any is extracted
            _check_shard_count(shard, split, len(image_ids), config.batch_size)
        for split, image_ids in images.items():
            preprocessor.extract_shard(split, image_ids, *shard)
        log(f"shard {shard[0]}/{shard[1]} done; when every shard is, run the same command without --shard to merge "
            "them and finish preprocessing.")
        return preprocessor.manifest
    with folder_lock(out_dir, "preprocess"):
        manifest = Preprocessor(config, Path(out_dir), log).run()
    log(summary_text(manifest, config.split_list))
    return manifest


def summary_text(manifest: Manifest, splits: list[str]) -> str:
    """A short table of what each split holds."""
    grids = any(manifest.splits[split].num_grid_images for split in splits)
    lines = ["split          questions  images  missing  answer coverage" + ("   grids" if grids else "")]
    for split in splits:
        entry = manifest.splits[split]
        coverage = "-" if entry.answer_coverage is None else f"{100 * entry.answer_coverage:.1f}%"
        lines.append(f"{split:<14} {entry.num_questions:>9}  {entry.num_images:>6}  {entry.num_missing_images:>7}"
                     f"  {coverage:>15}" + (f"  {entry.num_grid_images:>6}" if grids else ""))
    lines.append(f"vocabulary: {manifest.vocabulary_size} words ({manifest.oov_words} without a vector), "
                 f"{manifest.num_answers} answers")
    return "\n".join(lines)
