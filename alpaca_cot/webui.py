"""The Gradio chat page of ``web.py``: streaming replies, multi-turn history, generation sliders.

The conversation lives in a ``gr.State`` as ``[[user, reply, finished], ...]`` turns; the model
sees the history :func:`alpaca_cot.chat.model_history` makes of them (the rule of every chat
surface: a reply stopped with the Stop button, or an empty one, is left out together with the
message it answered), rendered by its own template. The chatbot shows every turn and marks
those left out. Replies are generated one at a time (a shared concurrency group of size 1);
Stop and Clear cancel a reply in progress, which ends its generation. Each reply is logged
with the number of earlier turns sent and left out.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from .chat import fit_history, make_record, model_history

logger = logging.getLogger(__name__)
ELEM = {"name": "model-name", "chatbot": "chatbot", "message": "message", "send": "send", "stop": "stop",
        "clear": "clear", "settings": "settings"}  # element ids, for styling and for the browser test
STOPPED_NOTE = "(stopped: not sent to the model again)"
EMPTY_NOTE = "(empty reply: not sent to the model again)"


def as_messages(turns: list[list], live: bool = False) -> list[dict]:
    """Chatbot messages for ``turns``; with ``live`` the last turn is still being generated."""
    out = []
    for i, (user, reply, finished) in enumerate(turns):
        out.append({"role": "user", "content": user})
        if live and i == len(turns) - 1:
            if reply:
                out.append({"role": "assistant", "content": reply})
        elif not finished:
            out.append({"role": "assistant", "content": f"{reply}\n\n{STOPPED_NOTE}".strip()})
        elif not reply.strip():
            out.append({"role": "assistant", "content": EMPTY_NOTE})
        else:
            out.append({"role": "assistant", "content": reply})
    return out


def reply_stream(generator, defaults, message: str, turns: list[list], system: str, max_new_tokens, temperature,
                 top_p, top_k, repetition_penalty, do_sample):
    """Yield the turns, the new one last (``[message, reply so far, finished]``), as the reply grows.

    The settings come from the sliders. The new turn is ``finished`` only in the last value
    yielded: a reply cancelled by Stop stays unfinished in the page's state.
    """
    args = replace(defaults, max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                   top_k=int(top_k), repetition_penalty=float(repetition_penalty), do_sample=bool(do_sample),
                   greedy=False)
    args.validate()
    pairs, left_out = model_history(turns)
    history = fit_history(generator, message, pairs, args.max_new_tokens, system or None)
    logger.info("reply %d: %d earlier turns sent to the model, %d left out (stopped or empty), %d dropped to fit "
                "the context", len(turns) + 1, len(history), left_out, len(pairs) - len(history))
    reply = ""
    yield turns + [[message, reply, False]]
    for piece in generator.stream(make_record(message, history, system or None), args.generate_kwargs()):
        reply += piece
        yield turns + [[message, reply, False]]
    yield turns + [[message, reply, True]]


def build_demo(generator, defaults):
    """A ``gr.Blocks`` page chatting with ``generator``; ``defaults`` are the GenerationArguments of the flags."""
    import gradio as gr

    with gr.Blocks(title=f"Alpaca-CoT chat: {generator.name}", analytics_enabled=False) as demo:
        gr.Markdown(f"## Alpaca-CoT chat\nModel: **{generator.name}** (template `{generator.template.name}`)",
                    elem_id=ELEM["name"])
        chatbot = gr.Chatbot(label="Conversation", elem_id=ELEM["chatbot"], height=420, feedback_options=None)
        turns = gr.State([])  # [[user, reply, finished], ...]
        with gr.Row():
            message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=8,
                                 elem_id=ELEM["message"], autofocus=True)
            send = gr.Button("Send", variant="primary", scale=1, elem_id=ELEM["send"])
        with gr.Row():
            stop = gr.Button("Stop", elem_id=ELEM["stop"])
            clear = gr.Button("Clear conversation", elem_id=ELEM["clear"])
        with gr.Accordion("Generation settings", open=False, elem_id=ELEM["settings"]):
            system = gr.Textbox(label="System text (empty: the template's default)", lines=2)
            do_sample = gr.Checkbox(value=defaults.do_sample and not defaults.greedy, label="Sample (off: greedy)")
            sliders = [
                gr.Slider(1, 2048, value=defaults.max_new_tokens, step=1, label="Max new tokens"),
                gr.Slider(0.05, 2.0, value=defaults.temperature, step=0.05, label="Temperature"),
                gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="Top-p"),
                gr.Slider(0, 200, value=defaults.top_k, step=1, label="Top-k (0: off)"),
                gr.Slider(1.0, 3.0, value=defaults.repetition_penalty, step=0.05, label="Repetition penalty"),
            ]

        def respond(text, earlier, system_text, *settings):
            text = (text or "").strip()
            if not text:
                yield as_messages(earlier), earlier, ""
                return
            *values, sample = settings
            try:
                for now in reply_stream(generator, defaults, text, earlier, system_text, *values, sample):
                    yield as_messages(now, live=not now[-1][2]), now, ""
            except ValueError as e:
                raise gr.Error(str(e).replace("--", "")) from e

        inputs = [message, turns, system, *sliders, do_sample]
        outputs = [chatbot, turns, message]
        events = [trigger(respond, inputs, outputs, concurrency_limit=1, concurrency_id="generate")
                  for trigger in (message.submit, send.click)]
        stop.click(as_messages, turns, chatbot, cancels=events, queue=False)  # shows the stopped turn as such
        clear.click(lambda: ([], [], ""), None, outputs, cancels=events, queue=False)
        chatbot.clear(lambda: ([], ""), None, [turns, message], cancels=events, queue=False)  # its trash icon
    return demo


def theme():
    """The default look with local fonts only: the page needs nothing from the internet."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])
