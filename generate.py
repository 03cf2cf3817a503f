"""Generate answers with a fine-tune (or a base model): one JSON object per line on stdout.

    python generate.py --lora_dir out --instruction "How many legs do 3 cats have?"
    python generate.py --lora_dir out --instruction "Translate to French" --input "Good morning"
    python generate.py --lora_dir out --instructions_file prompts.jsonl --greedy
    echo "Name three colours." | python generate.py --lora_dir out
    python generate.py --lora_dir out --base_only --instruction "..."   # the base model, same template

Inputs from a file or stdin are JSON/JSONL records (``instruction``, optional ``input``,
``history``, ``system``) or plain text, one instruction per line. Each output line is the
record with its answer in ``"output"``.
"""

import json
import sys
from dataclasses import dataclass, field
from typing import Optional

from alpaca_cot.cli_args import GenerationArguments, ModelArguments, parse


@dataclass
class GenerateArguments:
    lora_dir: Optional[str] = field(default=None, metadata={"help": "Output directory of uniform_finetune.py."})
    instruction: Optional[str] = field(default=None, metadata={"help": "The instruction to answer."})
    input: str = field(default="", metadata={"help": "Optional input (context) for --instruction."})
    instructions_file: Optional[str] = field(default=None, metadata={
        "help": "JSON/JSONL records or a text file with one instruction per line ('-' for stdin)."})
    base_only: bool = field(default=False, metadata={"help": "Answer with the base model, without the adapter."})
    batch_size: int = field(default=1, metadata={"help": "Records generated together (left-padded)."})


def read_requests(path: str) -> list[dict]:
    """Records from a JSON/JSONL file (or stdin as '-'), else plain-text lines as instructions."""
    from alpaca_cot.data.loading import read_requests as read

    return read(path, sys.stdin.read() if path == "-" else None)


def main(argv=None) -> list[dict]:
    gen_args, model_args, gen = parse((GenerateArguments, ModelArguments, GenerationArguments), argv,
                                      description=__doc__)
    try:
        gen.validate()
        if gen_args.instruction is not None:
            requests = [{"instruction": gen_args.instruction, "input": gen_args.input}]
        elif gen_args.instructions_file:
            requests = read_requests(gen_args.instructions_file)
        elif not sys.stdin.isatty():
            requests = read_requests("-")
        else:
            raise ValueError("give --instruction, --instructions_file FILE, or instructions on stdin")
        generator = model_args.load_generator(gen_args.lora_dir, base_only=gen_args.base_only)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    answers = generator.generate(requests, gen.generate_kwargs(), batch_size=gen_args.batch_size, seed=gen.seed,
                                 progress=len(requests) > 1)
    results = []
    for request, answer in zip(requests, answers):
        result = {**request, "output": answer}
        results.append(result)
        print(json.dumps(result, ensure_ascii=False), flush=True)
    return results


if __name__ == "__main__":
    main()
