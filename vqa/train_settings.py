"""The settings of ``vqa train``: code defaults, the model's recipe, --config, the flags, --set.

A recipe's ``train.min_steps`` stretches short runs (``vqa.train.stretch_factor``); epochs the
user names are trained exactly, so an explicit ``--epochs`` (or ``train.epochs`` in --set or
--config) turns it off unless ``train.min_steps`` is named too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vqa import config as config_lib
from vqa import registry
from vqa.config import Config
from vqa.storage import read_json


def train_config(args: argparse.Namespace) -> Config:
    """Code defaults, the model's recipe (``vqa.registry``), --config, flags, --set: twice, to find the model."""

    def layered(base):
        config = config_lib.resolve(args.config, base=base)
        config = config_lib.from_dict({"data": {"data_dir": str(args.data)}}, config, source="--data")
        flags = {"--model": ("model", "name", args.model or None), "--epochs": ("train", "epochs", args.epochs),
                 "--mixed-precision": ("train", "mixed_precision", True if args.mixed_precision else None),
                 "--devices": ("train", "devices", args.devices or None), "--seed": ("train", "seed", args.seed),
                 "--loss": ("train", "loss", args.loss or None)}
        for flag, (section, key, value) in flags.items():
            if value is not None:
                config = config_lib.from_dict({section: {key: value}}, config, source=flag)
        return config_lib.resolve(None, list(args.set or []), base=config)

    name = layered(config_lib.Config()).model.name
    config = layered(registry.recipe_config(name))
    if _user_sets(args, "epochs") and not _user_sets(args, "min_steps"):  # exactly the epochs asked for
        config = config_lib.from_dict({"train": {"min_steps": 0}}, config, source="--epochs")
    return config


def _user_sets(args: argparse.Namespace, key: str) -> bool:
    """Whether ``train.<key>`` comes from the user (a flag, --set or --config), not from a recipe."""
    if key == "epochs" and args.epochs is not None:
        return True
    if any(item.split("=", 1)[0].strip() == f"train.{key}" for item in args.set or []):
        return True
    if args.config:
        data = read_json(Path(args.config), "config file")  # already checked by resolve
        return isinstance(data, dict) and isinstance(data.get("train"), dict) and key in data["train"]
    return False
