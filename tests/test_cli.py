"""Command lines: unknown or misspelt flags fail, config files work, bad combinations are refused early."""

import pytest

import generate
import uniform_finetune
from alpaca_cot import train
from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments, parse

GROUPS = (ModelArguments, DataArguments, PeftArguments, FinetuneArguments)


@pytest.mark.parametrize("argv", [["--bogus", "1"], ["--learning_rat", "1e-4"], ["--lora_r"], ["--lora_rank", "8"]])
def test_unknown_misspelt_or_incomplete_flags_exit_with_an_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        uniform_finetune.main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_original_flags_parse_with_their_meaning():
    model, data, peft, ft = parse(GROUPS, [
        "--model_type", "llama", "--data", "alpaca:100", "belle_cn:0.1", "--lora_target_modules", "q_proj", "v_proj",
        "--per_gpu_train_batch_size", "2", "--epochs", "1", "--learning_rate", "2e-5", "--cutoff_len", "256",
        "--val_set_size", "0.1", "--quantization_bit", "4", "--report_to", "tensorboard", "--resume_from_checkpoint"])
    assert model.model_type == "llama" and model.quantization_bit == 4
    assert data.data == ["alpaca:100", "belle_cn:0.1"] and data.cutoff_len == 256 and data.val_set_size == 0.1
    assert peft.lora_target_modules == ["q_proj", "v_proj"] and peft.lora_r is None  # None: keep the preset
    assert ft.per_gpu_train_batch_size == 2 and ft.learning_rate == 2e-5 and ft.report_to == "tensorboard"
    assert ft.resume_from_checkpoint == "latest"  # bare flag


def test_config_file_with_flags_overriding_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data: [demo, demo_test]\nepochs: 2\nlora_r: 16\ngradient_checkpointing: true\n")
    _, data, peft, ft = parse(GROUPS, ["--config", str(config), "--epochs", "5"])
    assert data.data == ["demo", "demo_test"] and peft.lora_r == 16 and ft.gradient_checkpointing
    assert ft.epochs == 5


def test_config_file_with_an_unknown_key_is_refused(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text('{"epoch": 2}')
    with pytest.raises(SystemExit):
        parse(GROUPS, ["--config", str(config)])
    assert "unrecognized arguments: --epoch" in capsys.readouterr().err


@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if a model or tokenizer is loaded: refusals must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(train, "load_model", boom)
    monkeypatch.setattr(train, "load_tokenizer", boom)


@pytest.mark.parametrize("argv,message", [
    (["--data", "demo:20", "--val_set_size", "20"], "--val_set_size 20 asks for 20 validation records but the data "
                                                   "has only 20; lower --val_set_size"),
    (["--val_set_size", "2.5"], "use a whole count or a fraction"),
    (["--quantization_bit", "3"], "--quantization_bit must be 4 or 8"),
    (["--peft_type", "nope"], "unknown --peft_type 'nope'; known: lora"),
    (["--per_gpu_train_batch_size", "0"], "--per_gpu_train_batch_size must be >= 1"),
    (["--resume_from_checkpoint"], "no checkpoint-N folder in"),
    (["--resume_from_checkpoint", "/nonexistent/ckpt"], "no such checkpoint folder"),
    (["--data", "no_such_dataset"], "not a file and not a registered dataset"),
    (["--model_type", "gpt9"], "unknown --model_type 'gpt9'"),
])
def test_bad_settings_are_refused_before_the_model_loads(argv, message, no_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        uniform_finetune.main(argv + ["--output_dir", str(tmp_path / "out")])
    assert message in str(info.value.code)


def test_default_output_dir_is_derived_like_the_original():
    args = parse(GROUPS, ["--data", "demo:100", "/tmp/x/my_data.json", "--learning_rate", "2e-4"])
    assert train.default_output_dir(*args) == "saved_models/smollm2-135m-instruct_demo-100+my_data_0.0002_lora"


@pytest.mark.parametrize("argv,message", [(["--top_p", "1.5"], "--top_p"), (["--max_new_tokens", "0"], "--max_new_tokens")])
def test_generate_rejects_out_of_range_generation_settings(argv, message):
    with pytest.raises(SystemExit) as info:
        generate.main(argv + ["--instruction", "hi"])
    assert message in str(info.value.code)


def test_generate_needs_a_request(monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    with pytest.raises(SystemExit) as info:
        generate.main([])
    assert "give --instruction" in str(info.value.code)


@pytest.mark.parametrize("argv,hint", [(["--lora_rank", "8"], "--lora_rank: did you mean --lora_r"),
                                       (["--learnig_rate", "1"], "did you mean --learning_rate"),
                                       (["--per_device_train_batch_size", "2"], "--per_gpu_train_batch_size")])
def test_a_near_miss_flag_gets_a_suggestion(argv, hint, capsys):
    with pytest.raises(SystemExit):
        uniform_finetune.main(argv)
    assert hint in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--model_type", "lama"], "did you mean 'llama'?"),
    (["--template", "alpca"], "did you mean 'alpaca'?"),
    (["--peft_type", "lorra"], "did you mean 'lora'?"),
    (["--data", "demo_tset"], "did you mean 'demo_test'"),
])
def test_a_near_miss_name_gets_a_suggestion(argv, message, no_model, tmp_path):
    with pytest.raises(SystemExit) as info:
        uniform_finetune.main(argv + ["--output_dir", str(tmp_path / "out")])
    assert message in str(info.value.code)


def test_generation_presets_share_one_default_and_keep_the_original_one_flag_away(capsys):
    from alpaca_cot.cli_args import GENERATION_PRESETS, GenerationArguments
    from alpaca_cot.evaluation.runner import EvalGenerationArguments

    (gen,) = parse((GenerationArguments,), [])
    assert gen.repetition_penalty <= 1.1 and gen.no_repeat_ngram_size == 0 and gen.do_sample
    assert gen.generate_kwargs() == {"max_new_tokens": 256, "do_sample": True, "num_beams": 1,
                                     "repetition_penalty": 1.0, "temperature": 0.7, "top_p": 0.9, "top_k": 50}
    (original,) = parse((GenerationArguments,), ["--generation_preset", "original", "--top_k", "10"])
    assert original.repetition_penalty == 1.8 and original.no_repeat_ngram_size == 6 and original.top_k == 10
    assert {k: getattr(original, k) for k in GENERATION_PRESETS["original"] if k != "top_k"} == \
        {k: v for k, v in GENERATION_PRESETS["original"].items() if k != "top_k"}
    (evaluation,) = parse((EvalGenerationArguments,), [])
    assert evaluation.greedy and evaluation.repetition_penalty == 1.0
    with pytest.raises(SystemExit):
        parse((GenerationArguments,), ["--generation_preset", "orignal"])
    assert "did you mean 'original'?" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["generate", "server", "web"])
def test_the_chat_scripts_share_the_generation_defaults(script, monkeypatch):
    import importlib

    captured = {}
    module = importlib.import_module(script)
    monkeypatch.setattr(ModelArguments, "load_generator", lambda self, *a, **k: (_ for _ in ()).throw(
        FileNotFoundError("stop here")))
    original_parse = module.parse

    def spy(types, argv=None, description=None):
        out = original_parse(types, argv, description)
        captured["gen"] = out[-1]
        return out

    monkeypatch.setattr(module, "parse", spy)
    with pytest.raises(SystemExit):
        module.main(["--instruction", "x"] if script == "generate" else [])
    from alpaca_cot.cli_args import GenerationArguments

    assert captured["gen"] == GenerationArguments()


def test_help_reads_well_one_default_per_flag_and_examples_on_their_own_lines(capsys):
    with pytest.raises(SystemExit):
        uniform_finetune.main(["--help"])
    text = capsys.readouterr().out
    assert "\n    python uniform_finetune.py --data demo --output_dir out\n" in text
    assert "(default: None)" not in text and text.count("(default:") >= 20
    for block in text.split("\n  --")[1:]:
        assert block.count("default:") <= 1, block
    deepspeed = text[text.index("\n  --deepspeed"):text.index("\n  --fsdp ")]
    assert "torchrun" in deepspeed and "deepspeed launcher" in deepspeed


@pytest.mark.parametrize("warmup_ratio,factors", [(0.0, [1, 0.75, 0.5, 0.25]), (0.5, [0, 0.5, 1, 0.5])])
def test_the_logged_learning_rate_follows_the_flags(warmup_ratio, factors, tiny_llama_dir, tmp_path):
    """Linear schedule over 4 steps: no warm-up starts at the peak; a warm-up of 2 steps starts at 0."""
    import json

    (tmp_path / "data.json").write_text(json.dumps([{"instruction": f"q{i}", "input": "", "output": "a"}
                                                    for i in range(16)]))
    train.run(ModelArguments(model_type="llama", model_name_or_path=tiny_llama_dir),
              DataArguments(data=[str(tmp_path / "data.json")], cutoff_len=128), PeftArguments(),
              FinetuneArguments(output_dir=str(tmp_path / "out"), max_steps=4, logging_steps=1, save_steps=4,
                                learning_rate=1e-3, warmup_ratio=warmup_ratio))
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert logged == pytest.approx([1e-3 * f for f in factors])
