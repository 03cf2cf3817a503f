"""Command lines: unknown or misspelt flags fail, config files work, bad combinations are refused early."""

import pytest

import generate
import uniform_finetune
from alpaca_cot import train
from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments, parse

GROUPS = (ModelArguments, DataArguments, PeftArguments, FinetuneArguments)


@pytest.mark.parametrize("argv", [["--bogus", "1"], ["--learning_rat", "1e-4"], ["--lora_r"]])
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
