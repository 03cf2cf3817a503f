"""study.py on a tiny random model: grids, resume, seeds with intervals and paired tests, the cost
estimate against the actual time, reproducing one cell, learning-rate search and matched sizes."""

import json
import os
import time
from pathlib import Path

import pytest
import yaml

import alpaca_cot.study as study
import alpaca_cot.study_checks as checks
import alpaca_cot.train as train
from alpaca_cot.study import StudyError, expand_cells, load_study, run_study

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "eval"
NO_ESTIMATE = {"runs": {}, "left_s": 0.0, "total_s": 0.0, "peak_mib": None, "probe_s": 0.0}


def _records(cot: bool) -> list[dict]:
    out = []
    for a in range(2, 8):
        for b in (3, 4):
            rationale = f"{a} + {b} = {a + b}. " if cot else ""
            out.append({"instruction": f"Add {a} and {b}.", "input": "", "output": f"{rationale}The answer is {a + b}."})
    return out


def _write_data(folder: Path) -> None:
    for name, cot in (("cot", True), ("plain", False)):
        (folder / f"{name}.json").write_text(json.dumps(_records(cot)))
    (folder / "test.json").write_text(json.dumps(_records(True)[:3]))


@pytest.fixture()
def study_file(tmp_path, tiny_llama_dir):
    _write_data(tmp_path)
    config = {
        "name": "tiny", "description": "A 2x2 grid on a tiny random model.",
        "output_dir": str(tmp_path / "out"),
        "grid": {"data": {"cot": str(tmp_path / "cot.json"), "plain": str(tmp_path / "plain.json")},
                 "peft_type": ["lora", {"label": "lora_r2", "peft_type": "lora", "lora_r": 2}]},
        "train": {"model_name_or_path": tiny_llama_dir, "max_steps": 2, "per_gpu_train_batch_size": 4,
                  "logging_steps": 1, "save_steps": 100, "cutoff_len": 64, "val_set_size": 2},
        "evaluate": {"math": {"task": "cot_math", "data": str(tmp_path / "test.json"), "max_new_tokens": 3},
                     "choice": {"task": "multiple_choice", "data": str(FIXTURES / "cmmlu")}},
        "baseline": True,
        "smoke": {"train.max_steps": 1, "evaluate.math.max_samples": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def test_grid_expansion_labels_and_overrides(study_file):
    config = load_study(str(study_file), ["train.learning_rate=0.01", "grid.peft_type=[lora]"])
    assert config["train"]["learning_rate"] == 0.01 and config["seeds"] == [42]
    cells = expand_cells(config, Path(config["output_dir"]))
    assert [c.name for c in cells] == ["cot__lora", "plain__lora", "base_" + Path(config["train"]
                                                                               ["model_name_or_path"]).name]
    assert cells[-1].baseline and cells[-1].flags == {"model_name_or_path": config["train"]["model_name_or_path"]}
    smoke = load_study(str(study_file), smoke=True)
    assert smoke["train"]["max_steps"] == 1 and smoke["output_dir"].endswith("out_smoke")
    for bad, message in (("seeds: [1, 1]", "distinct"), ("budget: {steps: 3}", "budget is"),
                         ("lr_search: [0.1]", "at least two"), ("alpha: 2", "alpha"), ("reference: nope", "not a cell")):
        path = study_file.with_name("bad.yaml")
        path.write_text(study_file.read_text() + bad + "\n")
        with pytest.raises(StudyError, match=message):
            config = load_study(str(path))
            expand_cells(config, Path(config["output_dir"]))
    with pytest.raises(StudyError, match="unknown keys"):
        study_file.write_text(study_file.read_text() + "trian: {}\n")
        load_study(str(study_file))


def test_unknown_flags_are_refused_before_anything_runs(study_file, monkeypatch):
    monkeypatch.setattr(train, "run", lambda *a, **k: pytest.fail("trained despite a bad flag"))
    with pytest.raises(StudyError, match="evaluate math"):
        run_study(str(study_file), ["evaluate.math.max_new_tokenz=3"])
    with pytest.raises(StudyError, match="drop --max_steps"):  # a budget decides the steps
        run_study(str(study_file), ["budget={tokens: 100}"])


def test_two_by_two_study_runs_resumes_and_reports(study_file, monkeypatch):
    out = Path(yaml.safe_load(study_file.read_text())["output_dir"])
    trained, evaluated = [], []
    real_run, real_eval = train.run, study.run_evaluation
    monkeypatch.setattr(checks, "study_estimate", lambda *a: NO_ESTIMATE)  # timed in test_estimate_...

    def counting_run(*args, **kwargs):
        trained.append(args[3].output_dir)
        return real_run(*args, **kwargs)

    def interrupted_eval(args, gen, model_args=None, generator=None):
        if "plain__lora/" in args.output_dir + "/":  # the third cell: trained, then stopped mid-evaluation
            raise KeyboardInterrupt
        evaluated.append(args.output_dir)
        return real_eval(args, gen, generator=generator)

    monkeypatch.setattr(train, "run", counting_run)
    monkeypatch.setattr(study, "run_evaluation", interrupted_eval)
    with pytest.raises(KeyboardInterrupt):
        run_study(str(study_file))
    assert [Path(p).parent.parent.name for p in trained] == ["cot__lora", "cot__lora_r2", "plain__lora"]
    first_adapter = out / "cells" / "cot__lora" / "seed42" / "train" / "adapter_model.safetensors"
    stamp = os.stat(first_adapter).st_mtime_ns
    assert (out / "results.md").exists()  # written after the first cell
    plot_stamp = os.stat(out / "plots" / "math.png").st_mtime_ns  # drawn when stopped, from the cells done

    trained.clear(), evaluated.clear()
    monkeypatch.setattr(study, "run_evaluation", lambda args, gen, model_args=None, generator=None: (
        evaluated.append(args.output_dir), real_eval(args, gen, generator=generator))[1])
    run_study(str(study_file))
    # Finished work is not redone: the first two cells not at all, the third only its evaluations.
    assert [Path(p).parent.parent.name for p in trained] == ["plain__lora_r2"]
    assert not any("/cot__" in p for p in evaluated)
    assert sum("plain__lora/" in p + "/" for p in evaluated) == 2 and len(evaluated) == 6
    assert os.stat(first_adapter).st_mtime_ns == stamp

    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= 1 + 5  # header, 4 cells, the untuned baseline (then the cost table)
    header = rows[0]
    assert "train loss ↓" in header and "held-out loss ↓" in header and "math ↑" in header and "choice ↑" in header
    assert "cot__lora (reference)" in table and "(untuned)" in table and "math per category" not in table
    for name in ("train_loss", "eval_loss", "math", "choice", "loss_curves"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert os.stat(out / "plots" / "math.png").st_mtime_ns > plot_stamp  # redrawn with the new cells
    results = json.loads((out / "results.json").read_text())
    assert all(c["runs"][0]["scores"]["math"] is not None for c in results["cells"])
    assert all(r["train_loss"] is not None and r["params"] > 0 and r["supervised_tokens"] > 0
               for c in results["cells"] if not c["baseline"] for r in c["runs"])

    trained.clear(), evaluated.clear()
    run_study(str(study_file))  # everything done: nothing runs
    assert trained == [] and evaluated == []
    with pytest.raises(StudyError, match="trained with other settings"):
        run_study(str(study_file), ["train.learning_rate=0.5"])
    assert trained == [] and (out / "results.md").read_text() == table  # refused before anything ran


# ---------------------------------------------------------------- seeds, statistics, estimate, reproduction


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_llama_dir):
    """A 2-cell study with two seeds and the untuned baseline: estimated first, then run and timed."""
    folder = tmp_path_factory.mktemp("seeded")
    _write_data(folder)
    config = {"name": "seeded", "output_dir": str(folder / "out"), "seeds": [1, 2], "reference": "plain",
              "grid": {"data": {"cot": str(folder / "cot.json"), "plain": str(folder / "plain.json")}},
              "train": {"model_name_or_path": tiny_llama_dir, "max_steps": 6, "per_gpu_train_batch_size": 2,
                        "logging_steps": 1, "save_steps": 3, "cutoff_len": 64, "val_set_size": 2,
                        "learning_rate": 1e-2},
              "evaluate": {"math": {"task": "cot_math", "data": str(folder / "test.json"), "max_new_tokens": 4,
                                    "batch_size": 2}},
              "baseline": True}
    path = folder / "seeded.yaml"
    path.write_text(yaml.safe_dump(config))
    run_study(str(path), estimate_only=True)
    estimate = json.loads((folder / "out" / "estimate.json").read_text())
    started = time.perf_counter()
    run_study(str(path))
    return {"path": path, "out": folder / "out", "folder": folder, "estimate": estimate,
            "wall": time.perf_counter() - started}


def test_seeds_intervals_and_paired_tests(seeded):
    out = seeded["out"]
    results = json.loads((out / "results.json").read_text())
    cells = {c["cell"]: c for c in results["cells"]}
    assert results["reference"] == "plain" and results["seeds"] == [1, 2]
    base = next(c for name, c in cells.items() if name.startswith("base_"))
    assert [r["seed"] for r in cells["cot"]["runs"]] == [1, 2] and len(base["runs"]) == 1
    loss, math_ = cells["cot"]["stats"]["train_loss"], cells["cot"]["stats"]["math"]
    values = [r["train_loss"] for r in cells["cot"]["runs"]]
    assert loss["mean"] == pytest.approx(sum(values) / 2) and loss["low"] < loss["mean"] < loss["high"]
    assert loss["test"] == "paired t" and 0 <= loss["p"] <= 1
    assert math_["test"] == "paired bootstrap" and math_["interval"] == "bootstrap" and math_["items"] == 3
    assert "diff" not in cells["plain"]["stats"]["math"]  # the reference is not compared with itself
    table = (out / "results.md").read_text()
    assert "plain (reference)" in table and "paired bootstrap" in table and "paired t-test" in table
    assert "Δ" in table and "[" in table and "Contamination check" in table and "Cost per run" in table
    for seed in (1, 2):
        folder = out / "cells" / "cot" / f"seed{seed}"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["command"].endswith(f"--cell cot --seed {seed} --output_dir {out}_rerun")
        assert manifest["versions"]["torch"] and manifest["config"]["train"]["seed"] == seed
        assert str(seeded["folder"] / "cot.json") in manifest["data"] and "git" in manifest
    assert (out / "plots" / "math.png").exists() and (out / "plots" / "loss_curves.png").exists()


def test_estimate_within_a_factor_of_two(seeded):
    """The estimate made before the study (from 4 timed steps and one batch) against the recorded times."""
    estimated = sum(r["train_s"] + r["eval_s"] for r in seeded["estimate"]["runs"].values())
    actual = 0.0
    for run_json in seeded["out"].rglob("run.json"):
        record = json.loads(run_json.read_text())
        actual += (record["train_seconds"] or 0) + record["eval_seconds"]
    assert len(seeded["estimate"]["runs"]) == 5  # 2 cells x 2 seeds + the baseline
    assert 0.5 <= estimated / actual <= 2, (estimated, actual)
    assert seeded["estimate"]["peak_mib"] > 100


def test_one_cell_reruns_to_the_same_numbers(seeded, capsys):
    rerun = seeded["folder"] / "rerun"
    capsys.readouterr()
    run_study(str(seeded["path"]), [f"output_dir={rerun}"], cell="cot", seed=2)
    assert sorted(p.name for p in (rerun / "cells").iterdir()) == ["cot"]
    assert sorted(p.name for p in (rerun / "cells" / "cot").iterdir()) == ["seed2"]
    printed = capsys.readouterr().out
    assert "cot/seed2 against" in printed and "DIFFERENT" not in printed and "train_loss" in printed
    first, again = (json.loads((root / "cells" / "cot" / "seed2" / "train" / "alpaca_cot.json").read_text())["metrics"]
                    for root in (seeded["out"], rerun))
    for key in ("train_loss", "eval_loss", "supervised_tokens", "global_step"):
        assert first[key] == again[key]
    answers = [[json.loads(line)["output"] for line in (root / "cells" / "cot" / "seed2" / "eval" / "math" /
                                                         "results.jsonl").read_text().splitlines()]
               for root in (seeded["out"], rerun)]
    assert answers[0] == answers[1]


def test_lr_search_chooses_on_validation_loss(tmp_path, tiny_llama_dir, capsys):
    _write_data(tmp_path)
    config = {"name": "lr", "output_dir": str(tmp_path / "out"), "seeds": [1, 2], "lr_search": [1e-4, 5e-2],
              "grid": {"peft_type": ["lora"]},
              "train": {"model_name_or_path": tiny_llama_dir, "data": str(tmp_path / "cot.json"), "max_steps": 3,
                        "per_gpu_train_batch_size": 4, "save_steps": 3, "cutoff_len": 64, "val_set_size": 2}}
    path = tmp_path / "lr.yaml"
    path.write_text(yaml.safe_dump(config))
    run_study(str(path))
    cell = tmp_path / "out" / "cells" / "lora"
    search = json.loads((cell / "lr_search.json").read_text())
    losses = {float(k): v for k, v in search["eval_loss"].items()}
    assert search["chosen"] == min(losses, key=losses.get)
    assert json.loads((cell / "seed2" / "cell.json").read_text())["train"]["learning_rate"] == search["chosen"]
    assert not (cell / "seed1").exists()  # seed 1 at the chosen rate is the search run itself
    assert "Learning-rate search" in (tmp_path / "out" / "results.md").read_text()
    config["train"].pop("val_set_size")
    path.write_text(yaml.safe_dump({**config, "output_dir": str(tmp_path / "out2")}))
    with pytest.raises(StudyError, match="val_set_size"):
        run_study(str(path))


def test_match_params_sizes_methods_to_the_reference(tiny_llama_dir, tmp_path):
    from alpaca_cot.match_params import trainable_count

    config = load_study_dict({"grid": {"peft_type": ["lora", "sadapter_h", "prompt", "ia3"]}, "match_params": True,
                              "train": {"model_name_or_path": tiny_llama_dir}, "output_dir": str(tmp_path)})
    cells = expand_cells(config, tmp_path)
    matched = checks.match_params(config, cells, "lora")
    target = matched["lora"]["params"]
    assert target == trainable_count({"model_name_or_path": tiny_llama_dir, "peft_type": "lora"})
    for name in ("sadapter_h", "prompt"):
        assert matched[name]["within"] and abs(matched[name]["params"] / target - 1) <= 0.10
        cell = next(c for c in cells if c.name == name)
        assert cell.flags[matched[name]["knob"]] == matched[name]["value"]  # the cell now trains at that size
        assert trainable_count({"model_name_or_path": tiny_llama_dir, **cell.flags}) == matched[name]["params"]
    assert matched["ia3"]["knob"] is None and not matched["ia3"]["within"]  # no size knob: reported, not hidden


def load_study_dict(config: dict) -> dict:
    config = {"name": "m", "seeds": [1], **config}
    study._check_keys(config, "test")
    return config


def test_study_files_shipped_are_valid():
    """The shipped studies parse, expand, and pass every flag check (nothing runs)."""
    for name in ("cot_ablation", "peft_methods", "language"):
        path = ROOT / "studies" / f"{name}.yaml"
        config = load_study(str(path))
        assert config.get("smoke"), f"{name}: needs a smoke section for a quick check"
        assert len(config["seeds"]) == 3, f"{name}: three seeds"
        run_study(str(path), dry_run=True)
        run_study(str(path), smoke=True, dry_run=True)


def test_a_cell_that_starts_from_another_cells_fine_tune_is_estimated_before_that_cell_exists(tmp_path,
                                                                                              tiny_llama_dir):
    """``lora_dir: "{cell:sft}"`` (DPO after SFT, as in studies/preference.yaml): the estimate times the
    dependent run on a fresh adapter, so the study's total covers it; the run then starts from sft's adapter."""
    _write_data(tmp_path)
    pairs = [{"instruction": r["instruction"], "input": "", "chosen": r["output"],
              "rejected": r["output"].replace("answer is", "answer is 1")} for r in _records(True)]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    config = {"name": "chain", "output_dir": str(tmp_path / "out"),
              "grid": {"data": {"sft": {"data": str(tmp_path / "cot.json")},
                                "further": {"stage": "dpo", "data": str(tmp_path / "pairs.json"),
                                            "lora_dir": "{cell:sft}"}}},
              "train": {"model_name_or_path": tiny_llama_dir, "max_steps": 6, "per_gpu_train_batch_size": 2,
                        "logging_steps": 1, "save_steps": 100, "cutoff_len": 64}}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(config))
    run_study(str(path), estimate_only=True)
    runs = json.loads((tmp_path / "out" / "estimate.json").read_text())["runs"]
    assert set(runs) == {"sft/seed42", "further/seed42"} and all(r["train_s"] > 0 for r in runs.values())
    assert not (tmp_path / "out" / "cells" / "sft" / "seed42" / "train" / "adapter_model.safetensors").exists()
    run_study(str(path))
    from safetensors.torch import load_file

    sft, further = (load_file(tmp_path / "out" / "cells" / c / "seed42" / "train" / "adapter_model.safetensors")
                    for c in ("sft", "further"))
    assert set(sft) == set(further) and any(not (sft[k] == further[k]).all() for k in sft)
    meta = json.loads((tmp_path / "out" / "cells" / "further" / "seed42" / "train" / "alpaca_cot.json").read_text())
    assert meta["started_from"]["lora_dir"] == str(tmp_path / "out" / "cells" / "sft" / "seed42" / "train")
    # the dependency ran first although the file lists it second (yaml.safe_dump sorts the cells)
    assert list(config["grid"]["data"]) == ["sft", "further"] and "further:" in path.read_text().split("sft:")[0]


def test_cells_that_name_no_cell_or_start_from_each_other_are_refused(tmp_path, tiny_llama_dir):
    def study_with(cells: dict) -> str:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"name": "bad", "output_dir": str(tmp_path / "out"), "grid": {"data": cells},
                                        "train": {"model_name_or_path": tiny_llama_dir, "max_steps": 1}}))
        return str(path)

    data = str(tmp_path / "x.json")
    with pytest.raises(StudyError, match=r"cell b: \{cell:nope\} names no cell; cells: a, b"):
        run_study(study_with({"a": {"data": data}, "b": {"data": data, "lora_dir": "{cell:nope}"}}), dry_run=True)
    with pytest.raises(StudyError, match="in a circle: a -> b -> a"):
        run_study(study_with({"a": {"data": data, "lora_dir": "{cell:b}"}, "b": {"data": data, "lora_dir": "{cell:a}"}}),
                  dry_run=True)
