"""The Gradio chat page of ``web.py``: streaming replies, multi-turn history, generation sliders.

The conversation lives in a ``gr.State`` as ``[[user, assistant], ...]`` pairs (the unified
record's ``history``), so the model sees earlier turns through its own template; the
chatbot shows the same pairs. Replies are generated one at a time (a shared concurrency
group of size 1); Stop and Clear cancel a reply in progress, which ends its generation.
"""

from __future__ import annotations

from dataclasses import replace

from .chat import fit_history, make_record

ELEM = {"name": "model-name", "chatbot": "chatbot", "message": "message", "send": "send", "stop": "stop",
        "clear": "clear", "settings": "settings"}  # element ids, for styling and for the browser test


def as_messages(pairs: list[list[str]]) -> list[dict]:
    out = []
    for user, assistant in pairs:
        out.append({"role": "user", "content": user})
        if assistant:
            out.append({"role": "assistant", "content": assistant})
    return out


def reply_stream(generator, defaults, message: str, pairs: list[list[str]], system: str, max_new_tokens, temperature,
                 top_p, top_k, repetition_penalty, do_sample):
    """Yield ``(shown pairs)`` as the reply to ``message`` grows; the settings come from the sliders."""
    args = replace(defaults, max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                   top_k=int(top_k), repetition_penalty=float(repetition_penalty), do_sample=bool(do_sample),
                   greedy=False)
    args.validate()
    history = fit_history(generator, message, pairs, args.max_new_tokens, system or None)
    reply = ""
    yield pairs + [[message, reply]]
    for piece in generator.stream(make_record(message, history, system or None), args.generate_kwargs()):
        reply += piece
        yield pairs + [[message, reply]]


def build_demo(generator, defaults):
    """A ``gr.Blocks`` page chatting with ``generator``; ``defaults`` are the GenerationArguments of the flags."""
    import gradio as gr

    with gr.Blocks(title=f"Alpaca-CoT chat: {generator.name}", analytics_enabled=False) as demo:
        gr.Markdown(f"## Alpaca-CoT chat\nModel: **{generator.name}** (template `{generator.template.name}`)",
                    elem_id=ELEM["name"])
        chatbot = gr.Chatbot(label="Conversation", elem_id=ELEM["chatbot"], height=420, feedback_options=None)
        pairs = gr.State([])
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

        def respond(text, history, system_text, *settings):
            text = (text or "").strip()
            if not text:
                yield as_messages(history), history, ""
                return
            *values, sample = settings
            try:
                for shown in reply_stream(generator, defaults, text, history, system_text, *values, sample):
                    yield as_messages(shown), shown, ""
            except ValueError as e:
                raise gr.Error(str(e).replace("--", "")) from e

        inputs = [message, pairs, system, *sliders, do_sample]
        outputs = [chatbot, pairs, message]
        events = [trigger(respond, inputs, outputs, concurrency_limit=1, concurrency_id="generate")
                  for trigger in (message.submit, send.click)]
        stop.click(None, None, None, cancels=events, queue=False)
        clear.click(lambda: ([], [], ""), None, outputs, cancels=events, queue=False)
        chatbot.clear(lambda: ([], ""), None, [pairs, message], cancels=events, queue=False)  # its trash icon
    return demo


def theme():
    """The default look with local fonts only: the page needs nothing from the internet."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])
