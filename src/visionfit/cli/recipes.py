"""`visionfit recipes`: the named sets of defaults and what each sets."""

from __future__ import annotations

import argparse
from typing import Any

from visionfit.errors import UserError
from visionfit.recipes import RECIPES


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "recipes",
        help="list the named recipes, one line each; with NAME, the values it sets",
        description="Named sets of defaults for `visionfit train --recipe NAME`; flags still override them.",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="show the values one recipe sets")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    if arguments.name is not None:
        recipe = RECIPES.get(arguments.name)
        if recipe is None:
            raise UserError(f"unknown recipe {arguments.name!r}; choose from {', '.join(RECIPES)}")
        print(f"{recipe.name}: {recipe.description}")
        for key, value in recipe.values.items():
            print(f"  --{key.replace('_', '-')} {value}")
        return 0
    width = max(len(name) for name in RECIPES)
    for recipe in RECIPES.values():
        print(f"{recipe.name:<{width}}  {recipe.description}")
    print("\n`visionfit recipes NAME` shows the values one sets; flags given to train override them.")
    return 0
