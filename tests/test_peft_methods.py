"""Every ``--peft_type`` through the real training path (``train.run``) on a tiny random LLaMA.

For each method: a few steps on one fixed batch lower the loss; the output directory reloads
(``infer.load_generator``, as ``generate.py --lora_dir OUT`` does) into logits identical to the
in-memory model's at the end of training (tolerance 1e-5; measured 0) and generates. Then the
method x batch matrix: each method's greedy answers alone equal those of a left-padded batch of
3, whose every step's logits equal the training forward's on the same tokens. Then the 4/8-bit
compatibility table, flag handling, AdaLoRA's rank allocation, and the scripts.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import generate
import uniform_finetune
from alpaca_cot import batching, train
from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.infer import load_generator
from alpaca_cot.loader import load_model
from alpaca_cot.models import get_spec
from alpaca_cot.peft_methods import (PEFT_METHODS, check_compatible, get_method, method_params,
                                     resolve_method_targets)

WORDS = ["apple", "river", "stone", "cloud"]
RECORDS = [{"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"} for w in WORDS]
# Small sizes through the flags (which also proves each flag reaches the PEFT config).
FLAGS = {"lora": {"lora_r": 4}, "dora": {"lora_r": 4}, "loha": {"lora_r": 4}, "lokr": {"lora_r": 4},
         "prefix": {"num_virtual_tokens": 4, "prompt_encoder_hidden_size": 16},
         "p_tuning": {"num_virtual_tokens": 4, "prompt_encoder_hidden_size": 16},
         "prompt": {"num_virtual_tokens": 4}, "sadapter_h": {"bottleneck_size": 8},
         "sadapter_p": {"bottleneck_size": 8}, "padapter": {"bottleneck_size": 8},
         "freeze": {"freeze_trainable_layers": 1}}
EXPECTED_CONFIG = {"lora": {"r": 4}, "prefix": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
                   "prompt": {"num_virtual_tokens": 4}, "padapter": {"bottleneck_size": 8, "scaling": 4.0}}
LEARNING_RATE = {"full": 1e-3, "freeze": 1e-3}  # others: 1e-2
STEPS = 6


@pytest.fixture(scope="module")
def tiny64(tiny_model_factory):
    """Hidden size 64: bitsandbytes' CPU 4-bit kernel needs in_features divisible by 64."""
    return tiny_model_factory("llama", hidden=64)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "repeat.json"
    path.write_text(json.dumps(RECORDS))
    return str(path)


@pytest.fixture(scope="module")
def probe(tokenizer):
    return tokenizer(["Repeat the word river, please."], return_tensors="pt")["input_ids"]


def finetune(model_dir, data, out, peft_type, quantization_bit=None, **kw):
    flags = {**FLAGS.get(peft_type, {}), **kw.pop("peft", {})}
    ft = dict(output_dir=str(out), max_steps=STEPS, learning_rate=LEARNING_RATE.get(peft_type, 1e-2),
              per_gpu_train_batch_size=4, logging_steps=1, save_steps=1000, **kw)
    # fp32: inference loads the base in fp32, and the reload must be exact (auto trains a bf16 base
    # on CPUs with bf16 units)
    return train.run(ModelArguments(model_type="llama", model_name_or_path=model_dir, compute_dtype="fp32",
                                    quantization_bit=quantization_bit),
                     DataArguments(data=[data], cutoff_len=64), PeftArguments(peft_type=peft_type, **flags),
                     FinetuneArguments(**ft))


@pytest.fixture(scope="module")
def trained(tiny64, data_file, probe, tmp_path_factory):
    """``trained(method) -> (out_dir, state)``: one run per method, with the trained model's
    probe logits and loss history captured just before ``save_final`` writes the directory."""
    runs = {}

    def get(name):
        if name not in runs:
            state = {}
            original = train.save_final

            def capture(trainer, tokenizer, output_dir, meta):
                model = trainer.model.eval()
                with torch.no_grad():
                    state["logits"] = model(input_ids=probe).logits
                state["losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
                original(trainer, tokenizer, output_dir, meta)

            out = tmp_path_factory.mktemp(name) / "out"
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(train, "save_final", capture)
                if name == "qlora":  # LoRA on a 4-bit base
                    state["metrics"] = finetune(tiny64, data_file, out, "lora", quantization_bit=4)
                else:
                    state["metrics"] = finetune(tiny64, data_file, out, name)
            runs[name] = out, state
        return runs[name]

    return get


@pytest.mark.parametrize("name", list(PEFT_METHODS))
def test_method_trains_saves_reloads_and_generates(name, trained, probe):
    out, state = trained(name)
    losses = state["losses"]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses  # the same 4 samples every step: the loss must fall
    generator = load_generator(lora_dir=str(out))
    with torch.no_grad():
        reloaded = generator.model(input_ids=probe).logits
    assert torch.allclose(reloaded, state["logits"], atol=1e-5), (reloaded - state["logits"]).abs().max()
    answers = generator.generate(RECORDS[:2], {"max_new_tokens": 3, "do_sample": False}, batch_size=2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


# ---------------------------------------------------------------- method x batch

# Three prompts of different lengths: in a batch the shorter two are left-padded.
BATCH_RECORDS = [RECORDS[0], {"instruction": "Hi", "input": ""},
                 {"instruction": "Repeat the word stone, then the word cloud, twice.", "input": "slowly"}]
GREEDY = {"max_new_tokens": 6, "do_sample": False}
# Logits of a padded batch vs the training forward of each prompt alone. Both compute the same
# float32 sums for a row, in orders that differ with the batch shape (matrix-multiply blocking,
# attention over more, masked, keys: a masked key adds exactly 0). A sum of K terms in another
# order changes by at most ~K * 2^-24 of the sum of |terms|: K <= 128 in this model, so 1e-5
# relative per layer, 2 layers, logits below 10 in size: under 2e-4. Measured: at most 4.8e-7
# (full; 3e-7 on the 4-bit QLoRA base). A method that ignores its padding or its virtual tokens
# is off by 1e-2 and more (prefix tuning through PEFT's own generate on transformers 5.24: 0.5).
LOGIT_TOLERANCE = 2e-4


@pytest.mark.parametrize("name", [*PEFT_METHODS, "qlora"])
def test_greedy_answers_do_not_depend_on_the_batch(name, trained, monkeypatch):
    """predict.py's path: each method's answers alone (batch 1) equal a left-padded batch of 3's."""
    out, _ = trained(name)
    generator = load_generator(lora_dir=str(out))
    prompts = generator.prompt_ids(BATCH_RECORDS)
    assert len({len(p) for p in prompts}) == 3
    alone = [generator.generate_many([p], GREEDY, batch_size=1)[0] for p in prompts]
    steps = {}  # prompt -> the logits each decoding step scored for it
    pick = batching.RefillCore._pick

    def recording_pick(logits, ids, mask, rows):
        for row, request in zip(logits, rows):
            steps.setdefault(tuple(request.prompt), []).append(row.clone())
        return pick(logits, ids, mask, rows)

    monkeypatch.setattr(batching.RefillCore, "_pick", staticmethod(recording_pick))
    batched = generator.generate_many(prompts, GREEDY, batch_size=3)
    assert batched == alone
    worst = 0.0
    for prompt, answer in zip(prompts, batched):
        scored = steps[tuple(prompt)]
        assert len(scored) >= min(len(answer) + 1, GREEDY["max_new_tokens"])
        for t, logits in enumerate(scored[:len(answer) + 1]):
            with torch.no_grad():
                want = generator.model(input_ids=torch.tensor([prompt + answer[:t]])).logits[0, -1].float()
            worst = max(worst, float((logits - want).abs().max()))
    print(f"BATCH {name}: answers equal, max |logit difference| {worst:.2g} over {len(prompts)} prompts")
    assert worst <= LOGIT_TOLERANCE, (name, worst)


@pytest.mark.parametrize("name", ["prefix", "p_tuning", "prompt"])
def test_prompt_learning_streams_what_it_generates(name, trained):
    """The chat surfaces' path (``Generator.stream``, one request): the same answer as predict's."""
    generator = load_generator(lora_dir=str(trained(name)[0]))
    record = BATCH_RECORDS[2]
    assert "".join(generator.stream(record, GREEDY)) == generator.generate([record], GREEDY)[0]


def test_prompt_learning_settings_our_loop_lacks_are_refused(trained):
    out, _ = trained("prefix")
    generator = load_generator(lora_dir=str(out))
    with pytest.raises(ValueError, match="beam search .* PEFT's own generate would ignore or repeat"):
        generator.generate([RECORDS[0]], {**GREEDY, "num_beams": 2})


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIG))
def test_flags_and_presets_reach_the_saved_config(name, trained):
    out, _ = trained(name)
    config = json.loads((out / "adapter_config.json").read_text())
    assert EXPECTED_CONFIG[name].items() <= config.items()
    assert json.loads((out / "alpaca_cot.json").read_text())["peft_type"] == name


def test_adalora_reallocates_its_rank_budget_during_training(trained):
    out, _ = trained("adalora")
    config = json.loads((out / "adapter_config.json").read_text())
    # the preset's 200 + 1000 schedule does not fit 6 steps: rescaled, total_step set by the callback
    assert (config["total_step"], config["tinit"], config["tfinal"]) == (STEPS, 0, 1)
    # update_and_allocate ran: ranks were pruned from init_r (12) per matrix to the target average (8)
    pattern = config["rank_pattern"]
    assert len(pattern) == 4 and all(len(mask) == 12 for mask in pattern.values())  # 2 layers x q,v
    assert sum(sum(mask) for mask in pattern.values()) == 8 * len(pattern) < 12 * len(pattern)
    assert len({sum(mask) for mask in pattern.values()}) > 1  # re-allocated, not cut evenly


@pytest.mark.parametrize("name,changed,unchanged", [("full", ["layers.0.", "layers.1."], []),
                                                    ("freeze", ["layers.1."], ["layers.0.", "embed_tokens"])])
def test_full_and_freeze_save_the_whole_model(name, changed, unchanged, trained, tiny64):
    out, state = trained(name)
    assert not (out / "adapter_config.json").exists() and (out / "config.json").exists()
    base, tuned = load_file(f"{tiny64}/model.safetensors"), load_file(out / "model.safetensors")
    for key in base:
        same = torch.equal(base[key], tuned[key])
        if any(part in key for part in unchanged):
            assert same, key
        if any(part in key for part in changed) and key.endswith("proj.weight"):
            assert not same, key


def test_trainable_and_total_parameters_are_reported(tiny64, caplog):
    model = load_model(tiny64, get_spec("llama"))
    layer = sum(p.numel() for p in model.model.layers[1].parameters())
    total = sum(p.numel() for p in model.parameters())
    with caplog.at_level("INFO", logger="alpaca_cot"):
        train.wrap_model(model, get_method("freeze"), {"trainable_layers": 1}, None, ModelArguments(),
                         FinetuneArguments())
    assert f"trainable params: {layer:,} || all params: {total:,}" in caplog.text


# ---------------------------------------------------------------- 4-bit / 8-bit


def _quantized_step(model_dir, name, bits):
    """Load the tiny model in ``bits``, wrap it as ``run`` does, take one optimizer step."""
    method = get_method(name)
    peft_args = PeftArguments(peft_type=name, **FLAGS.get(name, {}))
    model = load_model(model_dir, get_spec("llama"), quantization_bit=bits)
    model.config.use_cache = False
    targets = resolve_method_targets(method, model, get_spec("llama"), None)
    model = train.wrap_model(model, method, method_params(peft_args), targets, ModelArguments(quantization_bit=bits),
                             FinetuneArguments())
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    model.train()  # never an eval forward on a 4-bit CPU model: it repacks the weights for inference only
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    return loss.item(), changed


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("name", list(PEFT_METHODS))
def test_quantized_bases_train_or_are_refused(name, bits, tiny64):
    method = get_method(name)
    if bits in method.quantization:
        loss, changed = _quantized_step(tiny64, name, bits)
        assert math.isfinite(loss) and changed
    else:
        with pytest.raises(ValueError, match=f"does not train on a {bits}-bit base"):
            check_compatible(method, PeftArguments(peft_type=name), bits, False)


def test_compatibility_table():
    """The statement made in README.md; changing it means re-running the test above."""
    table = {name: method.quantization for name, method in PEFT_METHODS.items()}
    assert table == {"lora": (4, 8), "adalora": (4, 8), "dora": (4,), "loha": (8,), "lokr": (8,), "ia3": (4, 8),
                     "prefix": (4, 8), "p_tuning": (4, 8), "prompt": (4, 8), "sadapter_h": (4, 8),
                     "sadapter_p": (4, 8), "padapter": (4, 8), "full": (), "freeze": ()}


# ---------------------------------------------------------------- flags and scripts


@pytest.fixture()
def no_model(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(train, "load_model", boom)


@pytest.mark.parametrize("argv,message", [
    (["--peft_type", "full", "--quantization_bit", "4"], "does not train on a 4-bit base; drop --quantization_bit "
                                                         "or pick one of: lora, adalora, dora, ia3"),
    (["--peft_type", "dora", "--quantization_bit", "8"], "does not train on a 8-bit base"),
    (["--peft_type", "lora", "--num_virtual_tokens", "5"], "--peft_type lora does not use --num_virtual_tokens"),
    (["--peft_type", "prompt", "--lora_target_modules", "q_proj"], "does not use --lora_target_modules"),
    (["--peft_type", "sadapter_h", "--lora_r", "4"], "flags this method accepts: --bottleneck_size"),
    (["--peft_type", "prefix", "--gradient_checkpointing"], "does not work with --gradient_checkpointing"),
    (["--peft_type", "lora", "--peft_config", "/nonexistent.yaml"], "preset file /nonexistent.yaml not found"),
])
def test_incompatible_settings_are_refused_before_the_model_loads(argv, message, no_model, tmp_path):
    with pytest.raises(SystemExit) as info:
        uniform_finetune.main(argv + ["--data", "demo:8", "--output_dir", str(tmp_path / "out")])
    assert message in str(info.value.code)


def test_every_method_has_a_preset_and_flags_override_it(tmp_path):
    for name in PEFT_METHODS:
        assert isinstance(method_params(PeftArguments(peft_type=name)), dict)
    assert method_params(PeftArguments(lora_r=32))["r"] == 32
    adalora = method_params(PeftArguments(peft_type="adalora", lora_r=4, adalora_init_r=6, adalora_delta_t=2))
    assert (adalora["target_r"], adalora["init_r"], adalora["deltaT"], adalora["tinit"]) == (4, 6, 2, 200)
    custom = tmp_path / "mine.yaml"
    custom.write_text("r: 2\nlora_alpha: 4\n")
    assert method_params(PeftArguments(peft_config=str(custom), lora_alpha=8)) == {"r": 2, "lora_alpha": 8}


def test_layer_count_and_preset_keys_are_checked(tiny64, data_file, tmp_path):
    with pytest.raises(train.ConfigError, match="--freeze_trainable_layers must be a whole number from 1 to 2"):
        finetune(tiny64, data_file, tmp_path / "out", "freeze", peft={"freeze_trainable_layers": 3})
    preset = tmp_path / "typo.yaml"
    preset.write_text("r: 4\nlora_alpah: 8\n")
    with pytest.raises(train.ConfigError, match="--peft_type lora: invalid parameters .*lora_alpah"):
        finetune(tiny64, data_file, tmp_path / "out", "lora", peft={"peft_config": str(preset)})


@pytest.mark.parametrize("name", ["full", "prefix"])
def test_scripts_end_to_end(name, tiny64, data_file, tmp_path, capsys):
    """``uniform_finetune.py --peft_type X`` then ``generate.py --lora_dir OUT`` with no other flag."""
    out = tmp_path / "out"
    uniform_finetune.main(["--model_name_or_path", tiny64, "--data", data_file, "--peft_type", name,
                           "--output_dir", str(out), "--max_steps", "2", "--cutoff_len", "64"])
    capsys.readouterr()
    results = generate.main(["--lora_dir", str(out), "--instruction", "Repeat the word apple.",
                             "--max_new_tokens", "3", "--greedy"])
    assert len(results) == 1 and isinstance(results[0]["output"], str)
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["instruction"] == "Repeat the word apple."


@pytest.mark.slow
def test_adapter_on_the_default_model(default_model_dir, data_file, probe, tmp_path):
    """The real embedded model with a sequential adapter (LoRA's real-model run is in test_training)."""
    out, state = tmp_path / "out", {}
    original = train.save_final

    def capture(trainer, tokenizer, output_dir, meta):
        with torch.no_grad():
            state["logits"] = trainer.model.eval()(input_ids=probe).logits
        state["losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        original(trainer, tokenizer, output_dir, meta)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "save_final", capture)
        train.run(ModelArguments(compute_dtype="fp32"), DataArguments(data=[data_file], cutoff_len=64),
                  PeftArguments(peft_type="sadapter_h"),
                  FinetuneArguments(output_dir=str(out), max_steps=6, learning_rate=1e-3, per_gpu_train_batch_size=4,
                                    logging_steps=1, save_steps=1000))
    assert state["losses"][-1] < state["losses"][0] - 0.5, state["losses"]
    generator = load_generator(lora_dir=str(out))
    with torch.no_grad():
        assert torch.allclose(generator.model(input_ids=probe).logits, state["logits"], atol=1e-4)
    answer = generator.generate([RECORDS[1]], {"max_new_tokens": 8, "do_sample": False})[0]
    assert "river" in answer
