"""Chat with a fine-tune in the terminal, or serve it over HTTP with an OpenAI-compatible API.

    python server.py --lora_dir out                        # terminal chat: multi-turn, streaming
    python server.py --lora_dir out --api --port 8000      # HTTP API on 127.0.0.1:8000
    python server.py --model_name_or_path merged --api --host 0.0.0.0 --api_key SECRET

Terminal commands: 'clear' forgets the conversation, 'exit' (or Ctrl-D) leaves; Ctrl-C stops
a reply (a stopped or empty reply is not kept in the conversation).
API routes (OpenAI's shapes; n, logprobs, stream):
    POST /v1/chat/completions   messages rendered by the model's template
    POST /v1/completions        a raw prompt (text or token ids), echo, logprobs, max_tokens 0
    GET  /v1/models
    POST /generate              {"instruction": ..., "input": ...} -> {"response": ...}
lm-evaluation-harness drives it with --model local-completions / local-chat-completions (README).
"""

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from alpaca_cot.cli_args import GenerationArguments, ModelArguments, parse

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ServerArguments:
    lora_dir: Optional[str] = field(default=None, metadata={"help": "Output directory of uniform_finetune.py."})
    base_only: bool = field(default=False, metadata={"help": "Use the base model, without the adapter."})
    system: Optional[str] = field(default=None, metadata={"help": "System text for the terminal chat."})
    api: bool = field(default=False, metadata={"help": "Serve the HTTP API instead of chatting in the terminal."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address the API binds to (loopback by default)."})
    port: int = field(default=8000, metadata={"help": "Port of the API."})
    api_key: Optional[str] = field(default=None, metadata={
        "help": "Require 'Authorization: Bearer KEY' on every request (default: $ALPACA_COT_API_KEY, else none)."})
    max_batch_size: int = field(default=8, metadata={
        "help": "API: concurrent requests generated together in one batch (1: one at a time)."})
    served_model_name: Optional[str] = field(default=None, metadata={
        "help": "Model id reported by the API (default: the fine-tune's folder name or the base model's)."})


def main(argv=None):
    args, model_args, gen = parse((ServerArguments, ModelArguments, GenerationArguments), argv, description=__doc__)
    try:
        gen.validate()
        if not 0 <= args.port <= 65535:
            raise ValueError("--port must be in 0..65535")
        if args.max_batch_size < 1:
            raise ValueError("--max_batch_size must be >= 1")
        generator = model_args.load_generator(args.lora_dir, base_only=args.base_only)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    import torch

    torch.manual_seed(gen.seed)
    if args.api:
        serve_api(args, gen, generator)
    else:
        from alpaca_cot.chat import ChatSession, run_terminal

        if sys.stdin.isatty():
            import readline  # noqa: F401  line editing and history for input()
        run_terminal(ChatSession(generator, gen.generate_kwargs(), system=args.system))


def serve_api(args, gen, generator):
    import uvicorn

    from alpaca_cot.api import create_app

    api_key = args.api_key or os.environ.get("ALPACA_COT_API_KEY") or None
    if args.host not in LOOPBACK and not api_key:
        logging.warning("binding to %s without --api_key: anyone who can reach this address can use the model",
                        args.host)
    model_id = args.served_model_name or generator.name.split(" + ")[-1]
    app = create_app(generator, gen, model_id, api_key=api_key, max_batch_size=args.max_batch_size)
    print(f"serving {generator.name} as {model_id!r} on http://{args.host}:{args.port}/v1 "
          f"(auth: {'bearer key' if api_key else 'none'})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
