"""The registry covers the original's table, every entry resolves, mixtures sample deterministically."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from alpaca_cot.data.converters import CONVERTERS
from alpaca_cot.data.loading import REPO_DATA_DIR, load_data, load_registry, resolve_files
from alpaca_cot.data.registry import (check_registry, hub_plan, leaves, readme_table, readme_with_table,
                                      registry_table)
from alpaca_cot.data.schema import DataError

# Every row of the original's statistics table (README, section "Data Collection"), with the
# in-progress rows of its Chinese README.
ORIGINAL_TABLE = [
    "Chain of Thought", "GPT4all", "GPTeacher", "Guanaco", "HC3", "alpaca", "Natural Instructions",
    "belle_cn", "instinwild", "prosocial dialog", "finance_en", "xP3", "firefly", "instruct",
    "Code Alpaca", "Alpaca_GPT4", "webGPT", "dolly 2.0", "baize", "hh-rlhf", "OIG(part)", "GAOKAO",
    "camel", "FLAN-Muffin", "COIG", "GPT4Tools", "ShareChat", "Auto CoT", "MOSS", "ultrachat",
    "Chinese-medical", "CSL", "pCLUE", "news_commentary", "StackLLaMA", "FastChat",
]
ORIGINAL_NAMES = ["alpaca", "belle", "alpaca-belle", "cot", "alpaca-cot", "alpaca-belle-cot", "belle1.5m",
                  "finance", "multiturn_chat", "belle0.5m", "gpt4all"]  # the original's --data names


@pytest.fixture
def registry():
    return load_registry()


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A data folder holding the real registry and a tiny file for every entry's file pattern."""
    shutil.copy(REPO_DATA_DIR / "datasets.json", tmp_path / "datasets.json")
    monkeypatch.setenv("ALPACA_COT_DATA_DIR", str(tmp_path))
    for name, entry in load_registry().items():
        for k, pattern in enumerate(entry.get("files", [])):
            path = tmp_path / re.sub(r"\*+", "x", pattern.replace("**/", ""))
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [{"instruction": f"{name} question {k}.{i}", "input": "", "output": f"answer {i}"} for i in range(10)]
            path.write_text(("\n".join(json.dumps(r) for r in rows) + "\n") if path.suffix == ".jsonl"
                            else json.dumps(rows), encoding="utf-8")
    return tmp_path


def test_registry_is_sound(registry):
    assert check_registry(registry) == []


def test_registry_covers_the_original_table(registry):
    rows = {e["table"]: name for name, e in registry.items() if e.get("table")}
    assert [t for t in ORIGINAL_TABLE if t not in rows] == []
    assert registry[rows["StackLLaMA"]]["status"] == "in_progress"
    for name in ORIGINAL_NAMES:
        assert name in registry


def test_table_rows_carry_the_original_tags(registry):
    for name, entry in registry.items():
        if entry.get("table") and "mixture" not in entry:
            assert {"lang", "task", "gen", "records", "license", "source", "format"} <= set(entry), name


def test_demo_entries_are_kept(registry):
    for name in ("demo", "demo_test", "demo_nocot"):
        assert registry[name]["format"] == "unified"
        assert resolve_files(name)  # the demo files ship with the repository


def test_mixtures_are_definitions_not_copies(registry):
    assert leaves("alpaca-belle-cot", registry) == ["alpaca", "belle", "cot"]
    assert leaves("belle_cn", registry) == ["belle", "belle1m", "multiturn_chat", "belle_math"]
    for name, entry in registry.items():
        if "mixture" in entry:
            assert "files" not in entry and "hub_files" not in entry, name


def test_mixture_cycles_are_reported():
    cyclic = {"a": {"mixture": ["b"]}, "b": {"mixture": ["a"]}}
    with pytest.raises(DataError, match="cycle: a -> b -> a"):
        leaves("a", cyclic)
    assert any("cycle" in p for p in check_registry(cyclic))


def test_every_entry_resolves_or_says_how_to_get_it(registry):
    for name, entry in registry.items():
        try:
            assert resolve_files(name)
        except DataError as e:
            message = str(e)
            assert message.startswith("--data "), message
            assert "expected file(s)" in message
            assert ("data/download.py" in message) != ("data/convert.py --format" in message), message


def test_missing_file_error_names_place_and_command(registry):
    with pytest.raises(DataError) as err:
        resolve_files("alpaca")
    assert str(REPO_DATA_DIR / "alpaca" / "alpaca_data_cleaned.json") in str(err.value)
    assert "python data/download.py alpaca" in str(err.value)
    with pytest.raises(DataError, match="in progress.*data/convert.py --format stack_exchange_paired"):
        resolve_files("stack_llama")


def test_every_entry_loads_when_its_files_are_present(data_root):
    registry = load_registry()
    for name, entry in registry.items():
        records, _ = load_data([name])
        parts = leaves(name, registry)
        per_leaf = {leaf: 10 * len(registry[leaf]["files"]) for leaf in parts}
        assert len(records) == sum(per_leaf.values()), name
        assert [r["source"] for r in records] == [leaf for leaf in parts for _ in range(per_leaf[leaf])]


def test_globbed_files_are_found(data_root):
    (data_root / "xP3" / "zu").mkdir(parents=True)
    (data_root / "xP3" / "zu" / "merged_zu.json").write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    assert len(resolve_files("xp3")) == 2
    assert load_data(["xp3"])[0][-1]["instruction"] == "i"


def test_counts_and_fractions_are_deterministic_for_a_seed(data_root):
    specs = ["alpaca:3", "belle:0.5", "cot"]
    first, _ = load_data(specs, seed=7)
    again, _ = load_data(specs, seed=7)
    other, _ = load_data(specs, seed=8)
    assert first == again
    assert [r["source"] for r in first] == ["alpaca"] * 3 + ["belle"] * 5 + ["cot"] * 10
    assert first != other
    mixture, _ = load_data(["alpaca-belle-cot:0.1"], seed=7)
    assert len(mixture) == 3 and mixture == load_data(["alpaca-belle-cot:0.1"], seed=7)[0]


def test_hub_files_land_where_the_registry_looks(registry, tmp_path, monkeypatch):
    """Simulate every download: place each planned hub file at its target, then every entry resolves."""
    monkeypatch.setenv("ALPACA_COT_DATA_DIR", str(tmp_path))
    shutil.copy(REPO_DATA_DIR / "datasets.json", tmp_path / "datasets.json")
    with_hub = [n for n, e in registry.items() if e.get("hub_files")]
    for item in hub_plan(with_hub, registry, tmp_path):
        target = item.extract_to / "task001.json" if item.is_archive else Path(
            re.sub(r"\*+", "x", str(item.target)))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("[]")
    for name in with_hub:
        assert resolve_files(name), name


def test_hub_plan_expands_mixtures_and_refuses_unknown(registry, tmp_path):
    plan = hub_plan(["alpaca-cot", "alpaca"], registry, tmp_path)
    assert [(p.dataset, p.hub_path) for p in plan] == [
        ("alpaca", "alpaca/alpaca_data_cleaned.json"), ("cot", "Chain-of-Thought/CoT_data.json")]
    assert plan[0].target == tmp_path / "alpaca" / "alpaca_data_cleaned.json"
    with pytest.raises(DataError, match="not a registered dataset"):
        hub_plan(["no_such_dataset"], registry, tmp_path)
    with pytest.raises(DataError, match="stack_llama: not on the hub"):
        hub_plan(["stack_llama"], registry, tmp_path)


def test_readme_table_matches_the_registry(registry):
    readme = (REPO_DATA_DIR / "README.md").read_text(encoding="utf-8")
    assert readme_table(readme) == registry_table(registry), \
        "data/README.md is stale: run python data/stats.py --update-readme"
    assert readme_with_table(readme, registry_table(registry)) == readme
    for name in registry:
        assert f"| `{name}` |" in readme


def test_readme_documents_every_format():
    readme = (REPO_DATA_DIR / "README.md").read_text(encoding="utf-8")
    for fmt in CONVERTERS:
        assert f"`{fmt}`" in readme, fmt
