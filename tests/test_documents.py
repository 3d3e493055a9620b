"""Hostile JSON and YAML: alias bombs, deep nesting and non-finite numbers are refused in one line before
they cost memory, and error messages stay short whatever value they quote (sweeps of sizes and depths)."""

from __future__ import annotations

import tracemalloc

import pytest

from ulpt.documents import MAX_DEPTH, MAX_NODES, json_depth, load_json, load_yaml
from ulpt.errors import MAX_MESSAGE_CHARS, SpecError, first_line, shown
from ulpt.jobspec import JobSpec


def alias_bomb(levels: int, width: int = 9) -> str:
    """A flow list of `levels + 1` anchors, each a list of `width` aliases of the one before: the last
    stands for width**levels strings in a few hundred bytes."""
    items = ['&a0 ["lol"]']
    items += [f"&a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]" for level in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


def expanded(levels: int, width: int) -> int:
    """Values the last anchor of `alias_bomb` stands for (a list counts as one value plus its items)."""
    size = 2  # ["lol"]
    for _ in range(levels):
        size = 1 + width * size
    return size


@pytest.mark.parametrize("width", [2, 5, 9])
@pytest.mark.parametrize("levels", range(1, 11))
def test_yaml_aliases_expanding_past_the_bound_are_refused_before_they_are_built(
    levels: int, width: int
) -> None:
    text = alias_bomb(levels, width)
    tracemalloc.start()
    try:
        if expanded(levels, width) > MAX_NODES:
            with pytest.raises(SpecError, match=f"expands to more than {MAX_NODES} values"):
                load_yaml(text)
        else:
            data = load_yaml(text)
            assert data[levels] == [data[levels - 1]] * width
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # what the old loader + message built: 52 MB at 7 levels, 522 MB at 8


@pytest.mark.parametrize("depth", [1, 10, MAX_DEPTH, MAX_DEPTH + 1, 1000, 100_000])
@pytest.mark.parametrize("style", ["json", "yaml-flow", "yaml-block"])
def test_nesting_deeper_than_the_bound_is_refused_in_one_line(depth: int, style: str) -> None:
    if style == "json":
        text = "[" * depth + "1" + "]" * depth
    elif style == "yaml-flow":
        text = "{a: " * depth + "1" + "}" * depth
    else:
        text = "- " * depth + "1\n"
    load = load_json if style == "json" else load_yaml
    if depth <= MAX_DEPTH:
        value = load(text)
        for _ in range(depth):
            value = value["a"] if isinstance(value, dict) else value[0]
        assert value == 1
    else:
        with pytest.raises(SpecError, match=f"nests deeper than {MAX_DEPTH} levels"):
            load(text)


@pytest.mark.parametrize(
    ("text", "depth"),
    [('{"a": "[[[[[[", "b": [1, {"c": []}]}', 4), ('"\\"[["', 0), ("[[], [[]], []]", 3), ("7", 0)],
)
def test_brackets_inside_strings_do_not_count_as_depth(text: str, depth: int) -> None:
    assert json_depth(text.encode()) == depth


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_refuses_non_finite_numbers(constant: str) -> None:
    with pytest.raises(SpecError, match=f"{constant} is not a number JSON allows"):
        load_json(f'{{"x": {constant}}}', "line 3")


@pytest.mark.parametrize("size", [10, 1_000, 100_000, 10_000_000])
def test_messages_are_one_short_line_whatever_value_they_quote(size: int) -> None:
    values: list[object] = ["x" * size, list(range(size)), {str(i): i for i in range(min(size, 100_000))}]
    nested: list[object] = []
    for _ in range(min(size, 500)):
        nested = [nested, nested]
    for value in [*values, nested]:
        assert len(shown(value)) < 400
    assert len(first_line("y" * size)) <= MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    "url",
    [
        "http://user:PASSWORD@host/simple/bigbench/",
        "https://PASSWORD@host:8443/x",
        "s3://key:PASSWORD@bucket/prefix",
        "http://user:PASS@WORD@host/x",
    ],
)
def test_credentials_in_urls_never_leave_in_a_message(url: str) -> None:
    message = first_line(f"cannot fetch {url}: 404\nmore lines")
    assert "PASS" not in message and "WORD" not in message and "***@" in message


def test_a_spec_file_with_an_alias_bomb_fails_in_one_line(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "job.yaml"  # type: ignore[operator]
    path.write_text(f"base_model: tiny\ntags: [{alias_bomb(8)}]\n")
    with pytest.raises(SpecError, match="expands to more than") as refused:
        JobSpec.from_yaml(path)
    assert len(str(refused.value)) < 300
