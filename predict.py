"""Batch prediction: answer every record of a dataset into a JSONL file, resumably.

    python predict.py --lora_dir out --data demo:100 --result_dir preds.jsonl
    python predict.py --lora_dir out --data test.json --result_dir preds.jsonl --predict_batch_size 8 --greedy
    python predict.py --model_name_or_path merged --data test.json --result_dir preds/   # -> preds/predictions.jsonl

Each output line is the input record plus its answer in ``"generate"``, in input order.
Rerunning the same command continues after the records already answered (an interrupted
run leaves only whole lines); ``--overwrite`` starts again.
"""

import sys
from dataclasses import dataclass, field
from typing import Optional

from alpaca_cot.cli_args import GenerationArguments, ModelArguments, parse


@dataclass
class PredictArguments:
    data: list[str] = field(metadata={
        "help": "Registry names and/or files (JSON list or JSONL of records; 'output' optional); NAME:N takes N."})
    result_dir: str = field(metadata={
        "help": "Output file (.jsonl), or a folder that gets predictions.jsonl."})
    lora_dir: Optional[str] = field(default=None, metadata={"help": "Output directory of uniform_finetune.py."})
    predict_batch_size: int = field(default=4, metadata={"help": "Records generated together (left-padded)."})
    base_only: bool = field(default=False, metadata={"help": "Answer with the base model, without the adapter."})
    skip_invalid: bool = field(default=False, metadata={"help": "Skip (and count) invalid input records."})
    overwrite: bool = field(default=False, metadata={"help": "Discard an existing output file instead of resuming."})


def main(argv=None):
    args, model_args, gen = parse((PredictArguments, ModelArguments, GenerationArguments), argv, description=__doc__)
    from alpaca_cot.data.loading import load_data
    from alpaca_cot.predict import predict, result_path

    path = result_path(args.result_dir)
    try:
        if args.predict_batch_size < 1:
            raise ValueError("--predict_batch_size must be >= 1")
        gen.validate()
        records, report = load_data(args.data, seed=gen.seed, skip_invalid=args.skip_invalid, require_output=False)
        if report.skipped:
            print(f"skipped {len(report.skipped)} invalid records (first: {report.skipped[0]})", file=sys.stderr)
        if not records:
            raise ValueError(f"--data {' '.join(args.data)}: no records")
        generator = model_args.load_generator(args.lora_dir, base_only=args.base_only)
        result = predict(generator, records, path, gen.generate_kwargs(), batch_size=args.predict_batch_size,
                         seed=gen.seed, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"\ninterrupted: the lines in {path} are complete; rerun the same command to continue")
    print(f"{path}: {result.summary()}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
