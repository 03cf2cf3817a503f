"""Preference stages (DPO, ORPO, SimPO, KTO, reward models) on TRL's trainers, fed by our renderer.

Pinned here: preference records refused clearly; chosen and rejected share exactly the prompt tokens
inference uses (two templates, with history) and their labels match instruction tuning's; truncation
keeps the prompt's end and both EOS; every stage trains with LoRA and two other methods and its output
loads where it is used; starting from an SFT fine-tune (trained further or merged first); resume
continues exactly; on the embedded model, DPO's implicit reward accuracy on held-out demo pairs rises
and a reward model ranks them above chance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments, PreferenceArguments
from alpaca_cot.data.preference import load_preference_data, unpair
from alpaca_cot.data.schema import DataError
from alpaca_cot.pairs import encode_pairs, encode_unpaired
from alpaca_cot.preference import finetune
from alpaca_cot.templates import get_template
from alpaca_cot.tokenize import IGNORE_INDEX, TruncationReport, encode_prompts, encode_records, special_prefix
from alpaca_cot.train import ConfigError

PAIR = {"system": "Be exact.", "instruction": "And 6 times 7?", "input": "",
        "history": [["What is 2 + 2?", "2 + 2 = 4. The answer is 4."]],
        "chosen": "6 * 7 = 42. The answer is 42.", "rejected": "6 * 7 = 43. The answer is 43."}


def write(path: Path, records) -> str:
    path.write_text(json.dumps(records, ensure_ascii=False))
    return str(path)


# ---------------------------------------------------------------- records


def test_bad_preference_records_are_refused_with_file_record_and_problem(tmp_path):
    good = {"instruction": "Add 1 and 1.", "input": "", "chosen": "2", "rejected": "3"}
    cases = [({**good, "rejected": "2"}, "'chosen' and 'rejected' are the same text"),
             ({k: v for k, v in good.items() if k != "rejected"}, "missing key 'rejected'"),
             ({**good, "chosen": ["2"]}, "'chosen' must be a string, got a list"),
             ({**good, "history": [["only one side"]]}, "'history[0]' must be a [user, assistant] pair"),
             ({"instruction": "x", "input": "", "output": "y"}, "an instruction record ('output' without 'label')")]
    for bad, problem in cases:
        path = write(tmp_path / "pairs.json", [good, bad])
        with pytest.raises(DataError) as err:
            load_preference_data([path])
        assert str(err.value).startswith(f"{path}: record 1: {problem}"), str(err.value)
    # the instruction-record refusal names the preference data that does exist
    assert "demo_pref" in str(err.value)
    path = write(tmp_path / "pairs.json", [good, cases[0][0], good])
    records, report = load_preference_data([path], skip_invalid=True)
    assert len(records) == 2 and len(report.skipped) == 1 and "record 1" in report.skipped[0]
    kto = write(tmp_path / "kto.json", [{"instruction": "x", "input": "", "output": "y", "label": "yes"}])
    with pytest.raises(DataError, match=r"record 0: 'label' must be true or false, got a string"):
        load_preference_data([kto], unpaired=True)
    with pytest.raises(DataError, match="a labelled record .* where preference pairs"):  # KTO-only records
        load_preference_data([write(tmp_path / "kto2.json", [{"instruction": "x", "output": "y", "label": True}])])


def test_kto_reads_pairs_as_two_labelled_records():
    records = unpair([{**PAIR, "source": "t"}])
    assert [(r["output"], r["label"]) for r in records] == [(PAIR["chosen"], True), (PAIR["rejected"], False)]
    assert all(r["history"] == PAIR["history"] and r["system"] == PAIR["system"] for r in records)


# ---------------------------------------------------------------- tokens


@pytest.mark.parametrize("template_name", ["alpaca", "chat"])
def test_pair_tokens_are_the_inference_prompt_and_the_sft_labels(tokenizer, template_name):
    template = get_template(template_name)
    eos = tokenizer.eos_token_id
    (row,) = encode_pairs([PAIR], tokenizer, template, cutoff_len=4096)
    # the prompt is exactly what inference encodes for this request (history, system, last instruction)
    assert row["prompt_ids"] == encode_prompts([PAIR], tokenizer, template)[0]
    for side in ("chosen", "rejected"):
        ids = row[f"{side}_ids"]
        assert ids[-1] == eos and ids[:-1] == tokenizer(PAIR[side], add_special_tokens=False)["input_ids"]
        # instruction tuning on {output: side} gives the same tokens; its last turn's labels are these ids
        (sft,) = encode_records([{**PAIR, "output": PAIR[side]}], tokenizer, template, 4096)
        assert sft["input_ids"] == row["prompt_ids"] + ids
        assert sft["labels"][len(row["prompt_ids"]):] == ids
        assert sft["labels"][len(row["prompt_ids"]) - 1] == IGNORE_INDEX  # the prompt's last token is masked
    assert row["chosen_ids"] != row["rejected_ids"]
    (kto,) = encode_unpaired([{**PAIR, "output": PAIR["chosen"], "label": True}], tokenizer, template, 4096)
    assert kto == {"prompt_ids": row["prompt_ids"], "completion_ids": row["chosen_ids"], "label": True}


def test_truncation_keeps_the_prompt_end_and_both_eos_and_reports(tokenizer):
    template, eos = get_template("alpaca"), tokenizer.eos_token_id
    long = {**PAIR, "history": [], "instruction": "Some context. " * 60 + "What is 6 * 7?"}
    full = encode_pairs([long], tokenizer, template, 4096)[0]
    report = TruncationReport()
    (row,) = encode_pairs([long], tokenizer, template, cutoff_len=64, report=report)
    assert report.truncated == 1 and report.dropped == 0
    assert len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= 64
    front = len(special_prefix(tokenizer))  # e.g. BOS stays in front
    assert row["prompt_ids"][:front] == full["prompt_ids"][:front]
    tail = len(row["prompt_ids"]) - front
    assert row["prompt_ids"][front:] == full["prompt_ids"][-tail:]  # the end of the prompt ("### Response:") stays
    assert row["chosen_ids"] == full["chosen_ids"] and row["rejected_ids"] == full["rejected_ids"]
    # responses longer than the room left end in EOS; a pair that truncation makes identical is dropped
    wordy = {**long, "chosen": "word " * 80 + "42", "rejected": "word " * 80 + "43"}
    report = TruncationReport()
    assert encode_pairs([wordy, long], tokenizer, template, cutoff_len=64, report=report) != []
    assert report.dropped == 1 and report.dropped_examples == [0] and report.truncated == 2
    (short,) = encode_pairs([{**wordy, "rejected": "no"}], tokenizer, template, cutoff_len=64)
    assert short["chosen_ids"][-1] == eos and short["rejected_ids"][-1] == eos
    assert len(short["prompt_ids"]) + len(short["chosen_ids"]) == 64


# ---------------------------------------------------------------- training


def train(model_dir, out, stage, method="lora", data="demo_pref:8", steps=1, **extra):
    pref = {k: extra.pop(k) for k in list(extra) if k in PreferenceArguments.__dataclass_fields__}
    peft = {k: extra.pop(k) for k in list(extra) if k in PeftArguments.__dataclass_fields__}
    ft = dict(output_dir=str(out), max_steps=steps, per_gpu_train_batch_size=2, logging_steps=1, save_steps=1000,
              learning_rate=1e-3)
    ft.update(extra)
    return finetune(ModelArguments(model_type="llama", model_name_or_path=model_dir),
                    DataArguments(data=[data], cutoff_len=96), PeftArguments(peft_type=method, **peft),
                    FinetuneArguments(**ft), PreferenceArguments(stage=stage, **pref))


MATRIX = [("dpo", "lora"), ("dpo", "ia3"), ("dpo", "prefix"), ("orpo", "lora"), ("orpo", "loha"),
          ("orpo", "sadapter_p"), ("simpo", "lora"), ("simpo", "dora"), ("simpo", "prefix"), ("kto", "lora"),
          ("kto", "lokr"), ("kto", "padapter"), ("rm", "lora"), ("rm", "ia3"), ("rm", "freeze")]


@pytest.mark.parametrize("stage,method", MATRIX)
def test_every_stage_trains_with_several_methods_and_its_output_is_used(tiny_llama_dir, tmp_path, stage, method):
    out = tmp_path / "out"
    metrics = train(tiny_llama_dir, out, stage, method)
    assert metrics["global_step"] == 1 and math.isfinite(metrics["train_loss"])
    meta = json.loads((out / "alpaca_cot.json").read_text())
    assert meta["stage"] == stage and meta["peft_type"] == method and meta["args"]["stage"] == stage
    assert (out / "loss.png").exists()
    if stage == "rm":
        from alpaca_cot.evaluation.reward import load_reward_model, score_pairs

        model, tok, template, _ = load_reward_model(str(out))
        rows = score_pairs([PAIR], model, tok, template, reward_model=True)
        assert math.isfinite(rows[0]["margin"])
        with pytest.raises(ValueError, match="reward model"):  # it scores, it does not generate
            from alpaca_cot.infer import load_generator

            load_generator(str(out))
        return
    assert (out / "rewards.png").exists()
    if method == "lora":
        assert not (out / "ref").exists()  # no reference adapter saved with the result
        assert "rewards/margins" in meta["metrics"] and "logps/chosen" in meta["metrics"] or stage == "kto"
    from alpaca_cot.infer import load_generator

    generator = load_generator(str(out))
    answers = generator.generate([PAIR], {"max_new_tokens": 3, "do_sample": False})
    assert isinstance(answers[0], str)


def test_dpo_reference_is_the_disabled_adapter_and_evaluate_reward_runs(tiny_llama_dir, tmp_path):
    import evaluate

    out = tmp_path / "dpo"
    train(tiny_llama_dir, out, "dpo", "lora", steps=2, pref_loss="ipo", pref_beta=0.5)
    meta = json.loads((out / "alpaca_cot.json").read_text())
    assert meta["reference"] == "the base model (adapter disabled)"
    assert meta["stage_params"] == {"beta": 0.5, "loss": "ipo", "label_smoothing": 0.0}
    summary = evaluate.main(["--task", "reward", "--data", "demo_pref_test:4", "--lora_dir", str(out),
                             "--output_dir", str(tmp_path / "eval")])
    assert summary["n"] == 4 and summary["scored_by"] == "summed response log-probability"
    assert len((tmp_path / "eval" / "results.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("bits", [4, 8])
def test_dpo_trains_on_a_quantized_base(tiny_model_factory, tmp_path, bits):
    """bitsandbytes on the CPU; hidden 64 because its 4-bit kernel needs in_features divisible by 64."""
    from alpaca_cot.infer import load_generator

    out = tmp_path / "q"
    metrics = finetune(ModelArguments(model_type="llama", model_name_or_path=tiny_model_factory("llama", hidden=64),
                                      quantization_bit=bits),
                       DataArguments(data=["demo_pref:4"], cutoff_len=96), PeftArguments(),
                       FinetuneArguments(output_dir=str(out), max_steps=1, per_gpu_train_batch_size=2,
                                         save_steps=1000, learning_rate=1e-3), PreferenceArguments(stage="dpo"))
    assert metrics["global_step"] == 1 and math.isfinite(metrics["train_loss"])
    assert json.loads((out / "alpaca_cot.json").read_text())["quantization_bit"] == bits
    assert load_generator(str(out)).generate([PAIR], {"max_new_tokens": 2, "do_sample": False})


@pytest.mark.parametrize("mode", ["train", "merge"])
def test_dpo_starts_from_an_sft_fine_tune(tiny_llama_dir, tmp_path, mode):
    from alpaca_cot.infer import load_generator

    sft = tmp_path / "sft"
    finetune(ModelArguments(model_type="llama", model_name_or_path=tiny_llama_dir),
             DataArguments(data=["demo:8"], cutoff_len=96), PeftArguments(lora_r=4),
             FinetuneArguments(output_dir=str(sft), max_steps=1, per_gpu_train_batch_size=2, save_steps=1000))
    out = tmp_path / "dpo"
    train(None, out, "dpo", "lora", lora_dir=str(sft), sft_adapter=mode)
    meta = json.loads((out / "alpaca_cot.json").read_text())
    weights = load_file(str(out / "adapter_model.safetensors"))
    if mode == "train":  # the SFT adapter (rank 4) trained further, against a frozen copy of itself
        assert meta["reference"].startswith("a frozen copy of the SFT adapter")
        assert meta["peft_params"]["r"] == 4 and not (out / "ref").exists()
        sft_weights = load_file(str(sft / "adapter_model.safetensors"))
        assert weights.keys() == sft_weights.keys()
        assert any(not torch.equal(weights[k], sft_weights[k]) for k in weights)
    else:  # merged into the base first: a new adapter (rank 8) on sft_merged, which is the result's base
        assert meta["base_model_path"] == str((out / "sft_merged").resolve())
        assert json.loads((out / "sft_merged" / "alpaca_cot.json").read_text())["merged_from"] == str(sft)
        assert meta["peft_params"]["r"] == 8
    assert load_generator(str(out)).generate([PAIR], {"max_new_tokens": 2, "do_sample": False})


def test_resume_continues_exactly(tiny_llama_dir, tmp_path):
    import shutil

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    whole = train(tiny_llama_dir, straight, "dpo", steps=4, save_steps=2)
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")  # as if stopped after step 2
    second = train(tiny_llama_dir, resumed, "dpo", steps=4, save_steps=2, resume_from_checkpoint="latest")
    assert second["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)  # over all 4 steps, not 3-4
    a = load_file(str(straight / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    losses = [[h["loss"] for h in json.loads((d / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
               if "loss" in h and h["step"] > 2] for d in (straight, resumed)]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], abs=1e-6)


@pytest.mark.parametrize("flags,message", [
    ({"stage": "orpo", "pref_loss": "ipo"}, "--stage orpo does not use --pref_loss"),
    ({"stage": "sft", "pref_beta": 0.2}, "--pref_beta belong to the preference stages"),
    ({"stage": "dpo", "pref_label_smoothing": 0.6}, r"in \[0, 0.5\)"),
    ({"stage": "dpo", "pref_loss": "hinge", "pref_label_smoothing": 0.1}, "has no label smoothing"),
    ({"stage": "simpo", "peft_type": "prompt"}, "virtual tokens"),
    ({"stage": "dpo", "sft_adapter": "merge"}, "give --lora_dir"),
    ({"stage": "dpo", "packing": True}, "drop --packing"),
    ({"stage": "dpo", "streaming": True, "mix_weights": [1.0]}, "does not use --mix_weights, --streaming: they "
                                                                 "belong to the SFT data path"),
    ({"stage": "kto", "decontaminate": ["demo_test"]}, "does not use --decontaminate"),
])
def test_settings_that_cannot_work_are_refused_before_loading(tmp_path, flags, message):
    flags = dict(flags)
    pref = PreferenceArguments(**{k: flags.pop(k) for k in list(flags) if k in PreferenceArguments.__dataclass_fields__})
    with pytest.raises(ConfigError, match=message):
        finetune(ModelArguments(model_name_or_path=str(tmp_path / "no_model")),
                 DataArguments(data=["demo_pref:4"], **{k: flags.pop(k) for k in list(flags)
                                                          if k in DataArguments.__dataclass_fields__}),
                 PeftArguments(**flags), FinetuneArguments(output_dir=str(tmp_path / "o")), pref)


def test_instruction_data_is_refused_by_a_preference_stage(tiny_llama_dir, tmp_path):
    with pytest.raises(DataError, match="instruction record .* demo_pref"):
        train(tiny_llama_dir, tmp_path / "o", "dpo", data="demo:4")


# ---------------------------------------------------------------- the embedded model learns


@pytest.mark.slow
def test_dpo_raises_implicit_reward_accuracy_and_a_reward_model_ranks_held_out_pairs(default_model_dir, tmp_path):
    """Loose, honest bounds: 8 steps on 32 demo pairs, scored on 16 held-out pairs (demo_pref_test).

    Measured with this seed on 2 cores: implicit reward accuracy 0.81 (DPO, 13 of 16), reward model 0.56
    (9 of 16: a reward head barely starts in 8 steps); about 100 s.
    """
    from alpaca_cot.data.preference import load_preference_data as load
    from alpaca_cot.evaluation.reward import load_reward_model, score_pairs
    from alpaca_cot.infer import load_generator

    held_out, _ = load(["demo_pref_test:16"])
    common = dict(model_type="llama", model_name_or_path=default_model_dir)
    ft = dict(max_steps=8, per_gpu_train_batch_size=4, learning_rate=1e-3, logging_steps=4, save_steps=1000,
              seed=1)
    dpo = tmp_path / "dpo"
    finetune(ModelArguments(**common), DataArguments(data=["demo_pref:32"], cutoff_len=160),
             PeftArguments(lora_target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]),
             FinetuneArguments(output_dir=str(dpo), **ft), PreferenceArguments(stage="dpo"))
    generator = load_generator(str(dpo))
    tuned = score_pairs(held_out, generator.model, generator.tokenizer, generator.template, reward_model=False)
    with generator.model.disable_adapter():  # the reference: DPO's start
        start = score_pairs(held_out, generator.model, generator.tokenizer, generator.template, reward_model=False)
    # implicit reward r = beta * (log pi - log pi_ref): at the start every margin is 0 (accuracy 0)
    implicit = [t["margin"] - s["margin"] for t, s in zip(tuned, start)]
    accuracy = sum(m > 0 for m in implicit) / len(implicit)
    assert accuracy > 0.6, (accuracy, implicit)
    assert sum(implicit) / len(implicit) > 0

    rm = tmp_path / "rm"
    finetune(ModelArguments(**common), DataArguments(data=["demo_pref:32"], cutoff_len=160),
             PeftArguments(lora_target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]),
             FinetuneArguments(output_dir=str(rm), **ft), PreferenceArguments(stage="rm"))
    model, tok, template, _ = load_reward_model(str(rm))
    rows = score_pairs(held_out, model, tok, template, reward_model=True)
    assert sum(r["score"] for r in rows) / len(rows) > 0.5  # above chance


def test_demo_pairs_regenerate_byte_for_byte_and_differ_by_one_slip(tmp_path):
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "data" / "demo" / "make_demo.py"), "--out_dir", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("train.json", "train_nocot.json", "test.json", "pref_train.json", "pref_test.json"):
        assert (tmp_path / name).read_bytes() == (root / "data" / "demo" / name).read_bytes(), name
    pairs = json.loads((tmp_path / "pref_test.json").read_text())
    test = json.loads((tmp_path / "test.json").read_text())
    assert [p["instruction"] for p in pairs] == [t["instruction"] for t in test]
    assert all(p["chosen"] == t["output"] for p, t in zip(pairs, test))
    train_instructions = {r["instruction"] for r in json.loads((tmp_path / "train.json").read_text())}
    held_out = {t["instruction"] for t in test}
    for pair in pairs + json.loads((tmp_path / "pref_train.json").read_text()):
        assert pair["instruction"] not in train_instructions
        chosen, rejected = (re.split(r"\d+", pair[k]) for k in ("chosen", "rejected"))
        assert chosen == rejected  # the same words around the numbers: the same reasoning
        numbers = [re.findall(r"\d+", pair[k]) for k in ("chosen", "rejected")]
        changed = [i for i, (a, b) in enumerate(zip(*numbers)) if a != b]
        assert changed == [len(numbers[0]) - 2, len(numbers[0]) - 1]  # the last step's result and the answer
    assert not held_out & {p["instruction"] for p in json.loads((tmp_path / "pref_train.json").read_text())}
