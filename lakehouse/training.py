"""The recipe on lakehouse data: ``florence2.recipe`` with the Petastorm batch source added.

    python -m lakehouse.training --config configs/train_tiny.yaml --data run/data.json
    horovodrun -np 2 --gloo python -m lakehouse.training --data run/data.json

The recipe itself imports nothing of the lakehouse; this is where the two meet.
"""
from __future__ import annotations

from florence2 import recipe
from lakehouse.reader import petastorm_batches

SOURCES = {"petastorm": petastorm_batches}


def train(cfg: recipe.Config, data: dict, dist: recipe.Dist | None = None, log=print) -> dict:
    return recipe.train(cfg, data, dist, log, sources=SOURCES)


def main(argv=None) -> dict:
    return recipe.main(argv, sources=SOURCES)


if __name__ == "__main__":
    main()
