"""Readable ids for containers made without a name (``supervisor run`` without ``--name``):
an adjective and an animal, ``brisk_heron``, as Docker names its containers."""

from __future__ import annotations

import secrets
from collections.abc import Container

_ADJECTIVES = (
    "agile", "amber", "bold", "brave", "brisk", "bright", "calm", "candid", "cheery", "civil",
    "clever", "cosmic", "crisp", "curious", "daring", "deft", "eager", "early", "fair", "fancy",
    "fervent", "festive", "fond", "frank", "gentle", "glad", "golden", "grand", "happy", "hardy",
    "hearty", "honest", "humble", "jolly", "keen", "kind", "lively", "loyal", "lucid", "lucky",
    "merry", "mellow", "modest", "neat", "nimble", "noble", "patient", "plucky", "polite",
    "proud", "quick", "quiet", "rapid", "ready", "robust", "rustic", "serene", "sharp", "shiny",
    "silent", "sleek", "smart", "snug", "solid", "spry", "stoic", "sunny", "swift", "tidy",
    "tranquil", "trusty", "upbeat", "vivid", "warm", "wise", "witty", "zealous",
)  # fmt: skip

_ANIMALS = (
    "albatross", "alpaca", "antelope", "badger", "beaver", "bison", "bobcat", "buffalo", "camel",
    "caribou", "cheetah", "condor", "cougar", "coyote", "crane", "dingo", "dolphin", "donkey",
    "eagle", "egret", "falcon", "ferret", "finch", "gazelle", "gecko", "gibbon", "gopher",
    "heron", "hedgehog", "ibex", "iguana", "jackal", "jaguar", "kestrel", "koala", "lemur",
    "leopard", "lynx", "magpie", "marmot", "meerkat", "mink", "moose", "narwhal", "ocelot",
    "okapi", "osprey", "otter", "panda", "pelican", "penguin", "puffin", "quail", "raven",
    "salmon", "seal", "sparrow", "stork", "swan", "tapir", "tiger", "toucan", "turtle", "walrus",
    "weasel", "wombat", "wren", "yak", "zebra",
)  # fmt: skip


def pick_name(taken: Container[str]) -> str:
    """A free readable id: ``adjective_animal``, with a number once a few draws collide."""
    for attempt in range(64):
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_ANIMALS)}"
        if attempt >= 8:
            name += str(secrets.randbelow(1000))
        if name not in taken:
            return name
    return f"container_{secrets.token_hex(6)}"
