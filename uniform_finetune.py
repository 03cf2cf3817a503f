"""Fine-tune a registered LLM on instruction data with a parameter-efficient method.

One GPU (or the CPU):
    python uniform_finetune.py --data demo --output_dir out
    python uniform_finetune.py --model_type llama --model_name_or_path meta-llama/Llama-2-7b-hf \
        --data alpaca-belle-cot --lora_target_modules q_proj v_proj \
        --per_gpu_train_batch_size 4 --learning_rate 3e-4 --epochs 1
Several GPUs (DDP through the Trainer):
    torchrun --nproc_per_node 4 uniform_finetune.py --data alpaca --output_dir out
From a config file (flags on the command line win):
    python uniform_finetune.py --config my_run.yaml --epochs 1

Run with --help for every flag.
"""

import sys

from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments, parse


def main(argv=None) -> dict:
    args = parse((ModelArguments, DataArguments, PeftArguments, FinetuneArguments), argv, description=__doc__)
    from alpaca_cot.train import ConfigError, run
    from alpaca_cot.data.schema import DataError
    from alpaca_cot.guards import TrainingDiverged

    try:
        return run(*args)
    except (ConfigError, DataError, FileNotFoundError, TrainingDiverged) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
