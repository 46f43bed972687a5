"""The ``vqa`` command: thin argument parsing over plain functions.

Exit status: 0 success, 1 an error the user can fix (one sentence on stderr, no traceback unless
``--debug``), 2 bad usage, 130 interrupted (run the same command again to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

from vqa import registry
from vqa.errors import VQAError
from vqa.storage import json_text
from vqa.train_settings import train_config

BACKENDS = ("keras", "tensorflow")  # the first import of either starts TensorFlow's C++ runtime


def _quiet_backends(debug: bool) -> None:
    """Keep TensorFlow's C++ log lines off the user's screen unless ``--debug``.

    Lines logged before absl is initialised (``All log messages before absl::InitializeLog()``,
    ``cudart_stub``, oneDNN's notice: twice, once per TensorFlow extension module carrying
    its own copy of the logger) ignore ``TF_CPP_MIN_LOG_LEVEL``; the first import of the
    backend and its device search (``cuInit``) therefore run with file descriptor 2 on
    /dev/null. Later ones (an ``E`` line about oneDNN and DT_BOOL) obey level 3.
    """
    if debug:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if not any(name in sys.modules for name in BACKENDS) and not any(
            isinstance(finder, _QuietBackendStart) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietBackendStart())


class _QuietBackendStart(importlib.abc.MetaPathFinder):
    """Finds the first of BACKENDS imported and runs its import with C++ logging hidden, once."""

    def find_spec(self, name, path=None, target=None):
        if name not in BACKENDS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with _native_stderr_hidden():
            self.loader.exec_module(module)
            tf = sys.modules.get("tensorflow")
            if tf is not None and hasattr(tf, "config"):
                tf.config.list_physical_devices("GPU")  # cuInit's complaint on a machine without a GPU
        module.__loader__ = module.__spec__.loader = self.loader


@contextlib.contextmanager
def _native_stderr_hidden():
    """File descriptor 2 on /dev/null (C++ writes there); Python's ``sys.stderr`` still reaches the user."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    python_stderr = sys.stderr
    try:
        if _writes_to_fd2(python_stderr):
            sys.stderr = open(saved, "w", closefd=False, buffering=1, errors="backslashreplace")
        os.dup2(devnull, 2)
        yield
    finally:
        if sys.stderr is not python_stderr:
            sys.stderr.flush()
            _repoint_log_handlers(sys.stderr, python_stderr)
            sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _repoint_log_handlers(old, new) -> None:
    """Handlers made during the import (TensorFlow's logger) write to ``old``, about to close: give them ``new``."""
    import logging

    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from vqa.demo.data import write_demo_dataset

    summary = write_demo_dataset(args.out, train_images=args.train_images, val_images=args.val_images, seed=args.seed)
    _log(f"Demo dataset (synthetic scenes, official VQA v2 layout) written to {args.out}")
    print(json_text(summary))
    return 0


def _splits(value: str) -> list[str]:
    return [split.strip() for split in value.split(",") if split.strip()]  # also --sections, --parts


# Command-line flags of `vqa preprocess` -> fields of the preprocess config section.
PREPROCESS_FLAGS = {"data_dir": "data_dir", "splits": "splits", "images": "images_dir", "vectors": "vectors",
                    "weights": "weights", "features_mat": "features_mat", "id_map": "id_map", "limit": "limit",
                    "top_answers": "top_answers", "max_question_length": "max_question_length",
                    "batch_size": "batch_size", "feature_dtype": "feature_dtype", "shard": "shard",
                    "grid_features": "grid_features", "features": "features", "image_size": "image_size",
                    "grid_layer": "grid_layer", "regions": "regions"}


def _preprocess_settings(args: argparse.Namespace):
    """Defaults, then --config, then the flags given, then --set (as for training)."""
    from vqa import config as config_lib

    settings = config_lib.resolve(args.config, base=config_lib.PreprocessSettings())
    for flag, field in PREPROCESS_FLAGS.items():
        if (value := getattr(args, flag)) is not None:
            value = str(value) if isinstance(value, Path) else value
            settings = config_lib.from_dict({"preprocess": {field: value}}, settings,
                                            source=f"--{flag.replace('_', '-')}")
    return config_lib.resolve(None, list(args.set or []), base=settings)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from vqa.preprocess import preprocess

    preprocess(_preprocess_settings(args), args.out, log=_log)
    return 0


def _check_count(option: str, value: int) -> None:
    if value < 1:
        raise VQAError(f"{option} must be at least 1, not {value}.")


def cmd_train(args: argparse.Namespace) -> int:
    from vqa.distributed import cluster_from

    config = train_config(args)  # every setting checked before TensorFlow loads (with vqa.train)
    cluster = cluster_from(args.coordinator, args.num_processes, args.process_id, connect_timeout=args.connect_timeout)
    if args.seeds is not None:
        from vqa.seeds import train_seeds

        result = train_seeds(args.data, args.out, config, args.seeds, resume=not args.restart, log=_log,
                             cluster=cluster)
    else:
        from vqa.train import train

        result = train(args.data, args.out, config, resume=not args.restart, log=_log, cluster=cluster)
    print(json_text(result))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _check_count("--batch-size", args.batch_size)
    from vqa.evaluate import evaluate

    metrics = evaluate(args.run, args.data, split=args.split, results_path=args.results, baseline=args.baseline,
                       batch_size=args.batch_size, log=_log)
    print(json_text(metrics))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    _check_count("--batch-size", args.batch_size)
    from vqa.submit import submit

    print(json_text(submit(args.run, args.split, data_dir=args.data, out_dir=args.out, batch_size=args.batch_size,
                           log=_log)))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from vqa.metric import score_files

    print(json_text(score_files(args.questions, args.annotations, args.results, args.per_question).to_json()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _check_count("--top-k", args.top_k)
    from vqa.predict import predict_cli

    return predict_cli(args.run, args.image, args.question, args.top_k, args.json, args.questions_file,
                       args.attention, args.regions, args.region_id, log=_log)


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 < args.max_upload_mb <= 1024:  # a photo is a few MB; each upload is held in memory while decoded
        raise VQAError(f"--max-upload-mb must be above 0 and at most 1024, not {args.max_upload_mb:g}.")
    from vqa.serve import Limits, serve

    return serve(args.run, host=args.host, port=args.port,
                 limits=Limits(max_upload_bytes=int(args.max_upload_mb * 10**6)), log=_log)


def cmd_demo(args: argparse.Namespace) -> int:
    from vqa.demo import run_demo

    return run_demo(args.out, quick=args.quick, log=_log)


def cmd_bench(args: argparse.Namespace) -> int:
    from vqa.bench import run_bench

    return run_bench(args.out, quick=args.quick, sections=tuple(_splits(args.sections or "")), log=_log)


def cmd_download(args: argparse.Namespace) -> int:
    from vqa.download import download

    download(args.out, base_url=args.base_url, parts=_splits(args.parts) if args.parts else None, log=_log)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqa", description="Visual question answering on VQA v2 / MS-COCO.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("demo-data", help="write a small synthetic dataset in the official VQA v2 layout")
    p.add_argument("out", type=Path)
    p.add_argument("--train-images", type=int, default=600)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)

    p = commands.add_parser("preprocess", help="official JSON + images -> text files, ids, targets, features")
    p.add_argument("--data-dir", type=Path, help="folder with the official VQA v2 JSON files (default data/raw)")
    p.add_argument("--out", type=Path, required=True, help="output folder (train/evaluate read it)")
    p.add_argument("--splits", help="comma-separated, default train2014,val2014; the first defines vocabularies")
    p.add_argument("--images", type=Path, help="image root (default: --data-dir), holding train2014/ val2014/ ...")
    p.add_argument("--vectors", help="spaCy pipeline name or path with word vectors (default en_core_web_lg), "
                                     "or a GloVe / word2vec text file")
    p.add_argument("--weights", help="VGG-16 weights: imagenet (default), none, or a file (.h5 or .keras)")
    p.add_argument("--features-mat", type=Path, help="import neuraltalk vgg_feats.mat instead of extracting")
    p.add_argument("--id-map", type=Path, help="image id -> column for --features-mat ('<image_id> <column>' "
                                               "lines), or -> row for a --regions HDF5 (text, JSON or .pkl)")
    p.add_argument("--limit", type=int, help="keep only the first N questions of each split")
    p.add_argument("--top-answers", type=int, help="answer vocabulary size (default 1000)")
    p.add_argument("--max-question-length", type=int, help="tokens read per question (default 25)")
    p.add_argument("--batch-size", type=int, help="images per feature-extraction batch (default 32)")
    p.add_argument("--feature-dtype", choices=["float16", "float32"], help="default float16")
    p.add_argument("--grid-features", type=Path, help="import grid features for the attention models from a "
                                                      "pytorch-vqa HDF5 file (features (N, C, H, W), ids (N,))")
    p.add_argument("--regions", help="import bottom-up-attention region features: a peteanderson80 TSV (file, "
                                     "folder of parts or glob), a hengyuan-hu or ban-vqa HDF5 (+ its id map), or "
                                     "an MCAN/OpenVQA folder of .npz; the layout is detected")
    p.add_argument("--features", help="what extraction from the images keeps: fc7, grid (a layer's spatial grid, "
                                      "for the attention models), both (one forward pass), or none; default auto: "
                                      "fc7, or none when grids or regions are imported (then no image is needed)")
    p.add_argument("--image-size", type=int, help="resize images to N x N for extraction (default 0: the "
                                                  "backbone's own, 224 for VGG-16; 448 for VGG-16 grids only)")
    p.add_argument("--grid-layer", help="the grid's layer (default block5_pool for VGG-16, the last 4-D layer "
                                        "of a .keras model)")
    p.add_argument("--shard", help="INDEX/COUNT (0-based): extract only this share of the images, e.g. one per "
                                   "machine; then run once without --shard to merge and finish")
    p.add_argument("--config", type=Path, help="JSON file with a preprocess section (see preprocessing/)")
    p.add_argument("--set", action="append", metavar="preprocess.KEY=VALUE", help="override one setting")
    p.set_defaults(func=cmd_preprocess)

    p = commands.add_parser("train", help="train a model on preprocessed data into a run folder")
    p.add_argument("--data", type=Path, required=True, help="preprocessed folder (vqa preprocess --out)")
    p.add_argument("--out", type=Path, required=True, help="run folder, e.g. models/baseline")
    p.add_argument("--model", help="the model (default deeper-lstm-norm-i), by the image input it reads: "
                                   + registry.help_text())
    p.add_argument("--epochs", type=int)
    p.add_argument("--loss", choices=["soft", "softmax"])
    p.add_argument("--seed", type=int)
    p.add_argument("--devices", help="auto, all, cpu, or a number of devices")
    p.add_argument("--mixed-precision", action="store_true")
    p.add_argument("--config", type=Path, help="JSON file with data/model/train sections")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting")
    p.add_argument("--restart", action="store_true",
                   help="ignore an unfinished run's checkpoints (re-running into RUN resumes it by default)")
    p.add_argument("--seeds", type=int, metavar="N", help="train seeds --seed..+N-1 into OUT/seed-K; report mean ± std")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="several processes (JAX): process 0's address")
    p.add_argument("--num-processes", type=int, metavar="N", help="how many processes train together")
    p.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1 (0 writes the run)")
    p.add_argument("--connect-timeout", type=int, metavar="S", help="give up joining the others after S s (default 300)")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("evaluate", help="answer every question of a split, score it, write a report")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, help="preprocessed folder (default: the run's own)")
    p.add_argument("--split", default="val2014")
    p.add_argument("--results", type=Path, help="results file name (default: official naming in RUN/eval/SPLIT)")
    p.add_argument("--baseline", type=Path, help="another run (e.g. question-only) to compare in the report")
    p.add_argument("--batch-size", type=int, default=512)
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("submit", help="answer every question of a test split and zip the results for the "
                                           "evaluation server")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--split", required=True, choices=["test-dev2015", "test2015"],
                   help="test-dev2015 for the test-dev leaderboard, test2015 (all its questions) for test-std")
    p.add_argument("--data", type=Path, help="preprocessed folder holding the split (default: the run's own)")
    p.add_argument("--out", type=Path, help="folder for the results file and zip (default RUN/submission/SPLIT)")
    p.add_argument("--batch-size", type=int, default=512)
    p.set_defaults(func=cmd_submit)

    p = commands.add_parser("score", help="the official VQA accuracy of a results file")
    p.add_argument("--questions", type=Path, required=True)
    p.add_argument("--annotations", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--per-question", type=Path, help="write per-question accuracies (JSON) here")
    p.set_defaults(func=cmd_score)

    p = commands.add_parser("predict", help="answer a question about an image")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--image", type=Path)
    p.add_argument("--question")
    p.add_argument("--questions-file", type=Path, help='JSON lines {"image": ..., "question": ...[, "region_id": N]}')
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true",
                   help='print JSON (an attention run adds "attention": per glimpse or hop, H rows of W weights)')
    p.add_argument("--attention", type=Path, metavar="OUT.png",
                   help="attention runs (san, multi-glimpse): draw each glimpse's or hop's map over the image, "
                        "side by side, into OUT.png; with --questions-file, OUT-1.png, OUT-2.png, ... for its "
                        "questions in file order")
    p.add_argument("--regions", type=Path, help="runs on detector regions: the photo's boxes (TSV, HDF5 or .npz)")
    p.add_argument("--region-id", type=int, metavar="N", help="the image of --regions the photo is, if not named")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser("serve", help="a local web page and JSON API answering questions about your images")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image upload in MB (default 10)")
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("demo", help="the whole pipeline on a built-in synthetic dataset, offline")
    p.add_argument("--out", type=Path, default=Path("demo"))
    p.add_argument("--quick", action="store_true", help="a smaller, faster demo (for tests)")
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("bench", help="measure every stage side by side")
    p.add_argument("--out", type=Path, default=Path("bench/results.json"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sections", metavar="NAME,...",
                   help="run only these sections (comma-separated), e.g. learning; default: all")
    p.set_defaults(func=cmd_bench)

    p = commands.add_parser("download", help="fetch VQA v2 and COCO 2014 into data/raw")
    p.add_argument("--out", type=Path, default=Path("data/raw"))
    p.add_argument("--base-url", help="mirror to download from (default: the official hosts)")
    p.add_argument("--parts", help="comma-separated subset of the files to fetch")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_backends(args.debug)
    if args.command == "preprocess" and args.data_dir is None and args.config is None:
        parser.error("vqa preprocess needs --data-dir (or a --config whose preprocess section names data_dir)")
    try:
        return args.func(args)
    except VQAError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size.", file=sys.stderr)
        return 1
    except OSError as error:
        if args.debug or error.errno is None:
            raise
        print(f"error: {_os_error_sentence(error)}.", file=sys.stderr)
        return 1


def _os_error_sentence(error: OSError) -> str:
    """What went wrong with which of the user's paths, and what to do about it."""
    name = error.filename
    # os.strerror, not error.strerror: h5py puts a multi-line HDF5 report there.
    said = os.strerror(error.errno) + (f" ({name})" if name else "")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{said}: free some space and run the same command again to continue where it stopped"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"{said}: you cannot write there: choose a folder you can write to or fix its permissions"
    if error.errno == errno.EROFS:
        return f"{said}: that file system is read-only: choose a folder on another one"
    if name and error.errno == errno.EISDIR:
        return f"{name} is a folder: pass a file name"
    if name and error.errno in (errno.EEXIST, errno.ENOTDIR):
        in_the_way = _file_in_the_way(Path(os.fsdecode(name)))
        return f"{in_the_way} exists and is not a folder: pass a folder path"
    return said


def _file_in_the_way(path: Path) -> Path:
    """The path, or the nearest folder above it, that exists but is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return path if candidate.is_dir() else candidate
    return path
