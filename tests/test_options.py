"""Options declared once: checked values, flags, and what changed between two runs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from fewseg.errors import FewSegError
from fewseg.options import (
    add_flags,
    changed_options,
    defaults,
    option,
    options_from,
    prediction_only_names,
    recorded_defaults,
)


@dataclass
class Example:
    steps: int = option(3, "how many")
    rate: float = option(0.5, "how fast")
    name: str = option("a", "which")
    size: int | None = option(None, "how big, if at all")
    on: bool = option(True, "whether")


def test_values_are_coerced_or_refused_naming_the_option_and_the_source() -> None:
    options = options_from(Example, {"rate": 2, "name": 7, "size": 5}, "run.yaml")
    assert (options.rate, options.name, options.size) == (2.0, "7", 5)
    for values, message in [
        ({"steps": "three"}, "run.yaml: option steps must be int, got 'three'"),
        ({"steps": True}, "option steps must be int, got True"),
        ({"on": 1}, "option on must be bool, got 1"),
        ({"stepz": 1}, r"run.yaml: unknown option\(s\) of thing: stepz"),
    ]:
        with pytest.raises(FewSegError, match=message):
            options_from(Example, values, "run.yaml", "thing")


def test_flags_are_absent_unless_given() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser.add_argument_group("example"), Example)
    given = vars(parser.parse_args(["--steps", "4", "--no-on", "--size", "9"]))
    assert given == {"steps": 4, "rate": None, "name": None, "size": 9, "on": False}
    assert "how fast (default 0.5)" in parser.format_help()


@dataclass
class Predicting:
    steps: int = option(3, "how many")
    threshold: float = option(0.5, "where to cut", prediction_only=True)


def test_prediction_only_options_are_named_and_marked_in_the_help() -> None:
    assert prediction_only_names(Predicting) == ["threshold"]
    assert prediction_only_names(Example) == []
    parser = argparse.ArgumentParser()
    add_flags(parser.add_argument_group("example"), Predicting)
    text = " ".join(parser.format_help().split())
    assert "how many (default 3) --threshold" in text
    marked = "where to cut (default 0.5; prediction only: set it on a trained learner by "
    assert marked + "--learner-option)" in text


def test_changed_options_count_a_missing_one_as_its_default() -> None:
    saved = {"steps": 3, "rate": 0.5}  # written before `name` existed
    assert changed_options(saved, {"steps": 3, "rate": 0.5, "name": "a"}, defaults(Example)) == []
    assert changed_options(saved, {"steps": 4, "rate": 0.5, "name": "b"}, defaults(Example)) == [
        "name",
        "steps",
    ]


def test_a_record_without_an_option_stands_for_its_value_before_the_option() -> None:
    @dataclass
    class Later:
        kept: int = option(3, "added without changing the behaviour")
        changed: float = option(1.4, "added with a new default", before=1.0)

    assert defaults(Later) == {"kept": 3, "changed": 1.4}
    assert recorded_defaults(Later) == {"kept": 3, "changed": 1.0}
