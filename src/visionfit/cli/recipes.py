"""`visionfit recipes`: the named sets of defaults and what each sets."""

from __future__ import annotations

import argparse
from typing import Any

from visionfit.recipes import RECIPES


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("recipes", help="list the named recipes and what they set")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    for recipe in RECIPES.values():
        print(f"{recipe.name}: {recipe.description}")
        settings = ", ".join(f"{key}={value}" for key, value in recipe.values.items())
        print(f"  sets: {settings}")
    return 0
