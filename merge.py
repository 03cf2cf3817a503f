"""Merge a fine-tune's adapter into its base model: a standalone checkpoint with tokenizer.

    python merge.py --lora_dir out --merged_dir merged
    python merge.py --lora_dir out --merged_dir merged --compute_dtype bf16 --overwrite
    python generate.py --lora_dir merged --instruction "..."          # or --model_name_or_path merged
    python merge.py --lora_dir out --gguf out.gguf --gguf_type q8_0   # llama.cpp / Ollama (+ out.gguf.Modelfile)

The merged folder (safetensors, tokenizer, alpaca_cot.json) loads with
``AutoModelForCausalLM.from_pretrained(merged)`` alone. Prompt-based methods cannot be merged
and are refused; a base quantized for training is merged in full precision, with a warning.
"""

import logging
import sys
from dataclasses import dataclass, field
from typing import Optional

from alpaca_cot.cli_args import parse


@dataclass
class MergeArguments:
    lora_dir: str = field(metadata={"help": "Output directory of uniform_finetune.py (holding the adapter)."})
    merged_dir: Optional[str] = field(default=None, metadata={
        "help": "Where the merged checkpoint goes (created; must be empty). Needed unless --gguf is given."})
    model_name_or_path: Optional[str] = field(default=None, metadata={
        "help": "Base checkpoint (default: the one recorded in --lora_dir)."})
    model_type: Optional[str] = field(default=None, metadata={"help": "Model family (default: recorded)."})
    compute_dtype: str = field(default="auto", metadata={
        "help": "Dtype of the merged weights: auto (the base checkpoint's own), fp32, bf16, fp16."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --merged_dir."})
    gguf: Optional[str] = field(default=None, metadata={
        "help": "Also write the merged model as this GGUF file for llama.cpp, with our training template as its "
                "chat template, and an Ollama Modelfile beside it (FILE.Modelfile). Families: llama, qwen2, gemma3."})
    gguf_type: str = field(default="f16", metadata={"help": "Weight type of the GGUF: f16, bf16 or q8_0."})


def main(argv=None):
    (args,) = parse((MergeArguments,), argv, description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from alpaca_cot.merge import merge

    if not args.merged_dir and not args.gguf:
        sys.exit("error: give --merged_dir (a checkpoint folder), --gguf (a GGUF file), or both")
    try:
        if args.gguf:
            from alpaca_cot.gguf_export import export_fine_tune

            written = export_fine_tune(args.lora_dir, args.gguf, gguf_type=args.gguf_type, merged_dir=args.merged_dir,
                                       model_name_or_path=args.model_name_or_path, model_type=args.model_type,
                                       dtype=args.compute_dtype, overwrite=args.overwrite)
            if args.merged_dir:
                print(f"wrote the merged checkpoint (weights, tokenizer, alpaca_cot.json) to {args.merged_dir}")
            print(f"wrote {written['gguf']} ({args.gguf_type}; chat template of the training template)")
            print(f"wrote {written['modelfile']} (ollama create NAME -f {written['modelfile']})" if written["modelfile"]
                  else f"warning: {written['modelfile_error']}")
            if written["template_warning"]:
                print(f"warning: {written['template_warning']}")
            return written["gguf"]
        target = merge(args.lora_dir, args.merged_dir, model_name_or_path=args.model_name_or_path,
                       model_type=args.model_type, dtype=args.compute_dtype, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote the merged checkpoint (weights, tokenizer, alpaca_cot.json) to {target}")
    return target


if __name__ == "__main__":
    main()
