"""study.py: a 2x2 grid on a tiny random model runs, resumes after an interruption, and reports."""

import json
import os
from pathlib import Path

import pytest
import yaml

import alpaca_cot.study as study
import alpaca_cot.train as train
from alpaca_cot.study import StudyError, expand_cells, load_study, run_study

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def _records(cot: bool) -> list[dict]:
    out = []
    for a in range(2, 8):
        for b in (3, 4):
            rationale = f"{a} + {b} = {a + b}. " if cot else ""
            out.append({"instruction": f"Add {a} and {b}.", "input": "", "output": f"{rationale}The answer is {a + b}."})
    return out


@pytest.fixture()
def study_file(tmp_path, tiny_llama_dir):
    for name, cot in (("cot", True), ("plain", False)):
        (tmp_path / f"{name}.json").write_text(json.dumps(_records(cot)))
    (tmp_path / "test.json").write_text(json.dumps(_records(True)[:3]))
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
    assert config["train"]["learning_rate"] == 0.01
    cells = expand_cells(config, Path(config["output_dir"]))
    assert [c.name for c in cells] == ["cot__lora", "plain__lora", "base_" + Path(config["train"]
                                                                               ["model_name_or_path"]).name]
    assert cells[-1].baseline and cells[-1].flags == {"model_name_or_path": config["train"]["model_name_or_path"]}
    smoke = load_study(str(study_file), smoke=True)
    assert smoke["train"]["max_steps"] == 1 and smoke["output_dir"].endswith("out_smoke")
    with pytest.raises(StudyError, match="unknown keys"):
        study_file.write_text(study_file.read_text() + "trian: {}\n")
        load_study(str(study_file))


def test_unknown_flags_are_refused_before_anything_runs(study_file, monkeypatch):
    monkeypatch.setattr(train, "run", lambda *a: pytest.fail("trained despite a bad flag"))
    with pytest.raises(StudyError, match="evaluate math"):
        run_study(str(study_file), ["evaluate.math.max_new_tokenz=3"])


def test_two_by_two_study_runs_resumes_and_reports(study_file, monkeypatch):
    out = Path(yaml.safe_load(study_file.read_text())["output_dir"])
    trained, evaluated = [], []
    real_run, real_eval = train.run, study.run_evaluation

    def counting_run(*args):
        trained.append(args[3].output_dir)
        return real_run(*args)

    def interrupted_eval(args, gen, model_args=None, generator=None):
        if "plain__lora/" in args.output_dir + "/":  # the third cell: trained, then stopped mid-evaluation
            raise KeyboardInterrupt
        evaluated.append(args.output_dir)
        return real_eval(args, gen, generator=generator)

    monkeypatch.setattr(train, "run", counting_run)
    monkeypatch.setattr(study, "run_evaluation", interrupted_eval)
    with pytest.raises(KeyboardInterrupt):
        run_study(str(study_file))
    assert [Path(p).parent.name for p in trained] == ["cot__lora", "cot__lora_r2", "plain__lora"]
    first_adapter = out / "cells" / "cot__lora" / "train" / "adapter_model.safetensors"
    stamp = os.stat(first_adapter).st_mtime_ns
    assert (out / "results.md").exists()  # written after the first cell
    plot_stamp = os.stat(out / "plots" / "math.png").st_mtime_ns  # drawn when stopped, from the cells done

    trained.clear(), evaluated.clear()
    monkeypatch.setattr(study, "run_evaluation", lambda args, gen, model_args=None, generator=None: (
        evaluated.append(args.output_dir), real_eval(args, gen, generator=generator))[1])
    run_study(str(study_file))
    # Finished work is not redone: the first two cells not at all, the third only its evaluations.
    assert [Path(p).parent.name for p in trained] == ["plain__lora_r2"]
    assert not any("/cot__" in p for p in evaluated)
    assert sum("plain__lora/" in p + "/" for p in evaluated) == 2 and len(evaluated) == 6
    assert os.stat(first_adapter).st_mtime_ns == stamp

    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 5  # header, 4 cells, the untuned baseline
    header = rows[0]
    assert "train loss ↓" in header and "held-out loss ↓" in header and "math ↑" in header and "choice ↑" in header
    assert "**" in table and "(untuned)" in table and "math per category" not in table
    for name in ("train_loss", "eval_loss", "math", "choice", "loss_curves"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert os.stat(out / "plots" / "math.png").st_mtime_ns > plot_stamp  # redrawn with the new cells
    results = json.loads((out / "results.json").read_text())
    assert all(r["scores"]["math"] is not None for r in results)
    assert all(r["train_loss"] is not None and r["params"] > 0 for r in results if not r["baseline"])

    trained.clear(), evaluated.clear()
    run_study(str(study_file))  # everything done: nothing runs
    assert trained == [] and evaluated == []
    with pytest.raises(StudyError, match="trained with other settings"):
        run_study(str(study_file), ["train.learning_rate=0.5"])
    assert trained == [] and (out / "results.md").read_text() == table  # refused before anything ran


def test_study_files_shipped_are_valid(monkeypatch):
    """Both shipped studies parse, expand, and pass every flag check (nothing runs)."""
    for name in ("cot_ablation", "peft_methods"):
        path = ROOT / "studies" / f"{name}.yaml"
        config = load_study(str(path))
        assert config.get("smoke"), f"{name}: needs a smoke section for a quick check"
        run_study(str(path), dry_run=True)
        run_study(str(path), smoke=True, dry_run=True)
