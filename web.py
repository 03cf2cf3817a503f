"""A Gradio chat page for a fine-tune: streaming replies, multi-turn history, generation sliders.

    python web.py --lora_dir out                       # http://127.0.0.1:7860
    python web.py --lora_dir out --port 8080 --greedy  # the flags set the sliders' starting values
    python web.py --model_name_or_path merged --host 0.0.0.0   # reachable from other machines

The page shows the model's name, a Clear button (forget the conversation) and a Stop button;
a stopped or empty reply is not sent back to the model (it stays on the page, marked). It binds
to loopback unless --host says otherwise, and needs no internet access.
"""

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from alpaca_cot.cli_args import GenerationArguments, ModelArguments, parse


@dataclass
class WebArguments:
    lora_dir: Optional[str] = field(default=None, metadata={"help": "Output directory of uniform_finetune.py."})
    base_only: bool = field(default=False, metadata={"help": "Use the base model, without the adapter."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (loopback by default)."})
    port: int = field(default=7860, metadata={"help": "Port of the page."})


def main(argv=None):
    args, model_args, gen = parse((WebArguments, ModelArguments, GenerationArguments), argv, description=__doc__)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        gen.validate()
        if not 1 <= args.port <= 65535:
            raise ValueError("--port must be in 1..65535")
        generator = model_args.load_generator(args.lora_dir, base_only=args.base_only)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    import torch

    from alpaca_cot.webui import build_demo, theme

    # Our own log lines (one per reply: earlier turns sent and left out) on stderr; not the libraries'.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("alpaca_cot").addHandler(handler)
    logging.getLogger("alpaca_cot").setLevel(logging.INFO)

    torch.manual_seed(gen.seed)
    demo = build_demo(generator, gen)
    print(f"chat with {generator.name} at http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False, show_error=True,
                        theme=theme(), ssr_mode=False, quiet=True)


if __name__ == "__main__":
    main()
