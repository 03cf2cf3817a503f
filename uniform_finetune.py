r"""Fine-tune a registered LLM on instruction data with a parameter-efficient method.

One GPU (or the CPU):
    python uniform_finetune.py --data demo --output_dir out
    python uniform_finetune.py --model_type llama --model_name_or_path meta-llama/Llama-2-7b-hf \
        --data alpaca-belle-cot --lora_target_modules q_proj v_proj \
        --per_gpu_train_batch_size 4 --learning_rate 3e-4 --epochs 1
Several GPUs (DDP through the Trainer; with --deepspeed or --fsdp too, always launched with torchrun):
    torchrun --nproc_per_node 4 uniform_finetune.py --data alpaca --output_dir out
A preference stage after instruction tuning (see README, Preference tuning):
    python uniform_finetune.py --stage dpo --data demo_pref --lora_dir sft_out --output_dir dpo_out
From a config file (flags on the command line win):
    python uniform_finetune.py --config my_run.yaml --epochs 1

Every flag, with its default, is listed below (--help).
"""

import sys

from alpaca_cot.cli_args import (DataArguments, FinetuneArguments, ModelArguments, PeftArguments,
                                 PreferenceArguments, parse)


def main(argv=None) -> dict:
    args = parse((ModelArguments, DataArguments, PeftArguments, FinetuneArguments, PreferenceArguments), argv,
                 description=__doc__)
    from alpaca_cot.preference import finetune
    from alpaca_cot.train import ConfigError
    from alpaca_cot.data.schema import DataError
    from alpaca_cot.guards import TrainingDiverged

    try:
        return finetune(*args)  # --stage sft: train.run; dpo, orpo, simpo, kto, rm: preference.run
    except (ConfigError, DataError, FileNotFoundError, TrainingDiverged) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
