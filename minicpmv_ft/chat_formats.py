"""How each checkpoint generation writes a conversation out as text, and which characters of
that text are trained.

A format renders turns into a `TextBuilder`: plain text, trained character ranges, image
placeholders at known offsets, and (2.0) positions after which the next token is trained to
be the end-of-turn token. The encoder (chat_tokens.py) then tokenizes the whole text in one
call, exactly as the checkpoint's own chat()/processor does, and labels each token by the
character it starts at.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Turn:
    """One conversation turn: content parts are text and image placeholders, in order."""

    role: str  # "system", "user" or "assistant"
    parts: list  # str | chat_tokens.Placeholder
    index: int  # position of the turn in the data file's conversation (for error messages)
    reasoning: str | None = None  # thinking-mode reasoning of an assistant turn


class TextBuilder:
    """Accumulates rendered text with the character ranges that are trained."""

    def __init__(self):
        self._parts: list[str] = []
        self.length = 0
        self.trained: list[tuple[int, int]] = []  # [start, end) character ranges
        self.stops: list[int] = []  # the token starting at or after this offset gets the stop label
        self.images: list[tuple[int, object]] = []  # (offset, Placeholder)

    def add(self, text: str, trained: bool = False):
        if trained and text:
            self.trained.append((self.length, self.length + len(text)))
        self._parts.append(text)
        self.length += len(text)

    def add_content(self, parts, trained: bool):
        for part in parts:
            if isinstance(part, str):
                self.add(part, trained)
            else:  # an image placeholder: context, never trained
                self.images.append((self.length, part))
                self.add(part.text)

    def stop_here(self):
        self.stops.append(self.length)

    @property
    def text(self) -> str:
        return "".join(self._parts)


def strip_parts(parts):
    """The template's `content | trim` on a part list: whitespace off the outer text ends."""
    parts = list(parts)
    if parts and isinstance(parts[0], str):
        parts[0] = parts[0].lstrip()
    if parts and isinstance(parts[-1], str):
        parts[-1] = parts[-1].rstrip()
    return [p for p in parts if not isinstance(p, str) or p]


class ChatFormat:
    """Base: subclasses render turns; `structural` are strings that must not occur in content."""

    system_allowed = True
    thinking = False  # assistant turns may carry reasoning (a think block)
    end_of_turn = ""  # token string closing an assistant turn, "{eos}" for the tokenizer's eos
    structural: tuple[str, ...] = ()

    def context(self, tokenizer) -> dict:
        """Per-tokenizer values the rendering needs, computed once."""
        return {"bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token or ""}

    def end_of_turn_token(self, ctx) -> str:
        return self.end_of_turn.replace("{eos}", ctx["eos"])

    def render(self, turns: list[Turn], out: TextBuilder, ctx: dict, keep_earlier_reasoning: bool = False):
        raise NotImplementedError


class MiniCPMChat(ChatFormat):
    """MiniCPM-V 2.0: `<用户>` + content and `<AI>` + content, no separator, EOS at the end.
    `<用户>`/`<AI>` are plain text in its vocabulary. An answer that is not the last one has no
    end token in the text: the token after it is trained to be EOS."""

    system_allowed = False
    end_of_turn = "{eos}"
    structural = ("<用户>", "<AI>")
    prefixes = {"user": "<用户>", "assistant": "<AI>"}

    def render(self, turns, out, ctx, keep_earlier_reasoning=False):
        for k, turn in enumerate(turns):
            out.add(self.prefixes[turn.role])
            trained = turn.role == "assistant"
            out.add_content(turn.parts, trained)
            if trained and k < len(turns) - 1:
                out.stop_here()
        out.add(ctx["eos"], trained=turns[-1].role == "assistant")


class Llama3Chat(ChatFormat):
    """MiniCPM-Llama3-V 2.5: `<|begin_of_text|>`, then per turn a header, the trimmed content
    and `<|eot_id|>`. Rendered without the generation header the template always appends."""

    end_of_turn = "<|eot_id|>"

    def render(self, turns, out, ctx, keep_earlier_reasoning=False):
        out.add(ctx["bos"])
        for turn in turns:
            out.add("<|start_header_id|>" + turn.role + "<|end_header_id|>\n\n")
            trained = turn.role == "assistant"
            out.add_content(strip_parts(turn.parts), trained)
            out.add(self.end_of_turn, trained)


class ChatMLChat(ChatFormat):
    """ChatML: `<|im_start|>ROLE\\n` + content + `<|im_end|>\\n`. With `template_system`, the
    default system turn the checkpoint's template adds when there is none (2.6)."""

    end_of_turn = "<|im_end|>"

    def __init__(self, template_system: bool):
        self.template_system = template_system

    def context(self, tokenizer) -> dict:
        ctx = super().context(tokenizer)
        ctx["default_system"] = self._default_system(tokenizer) if self.template_system else None
        return ctx

    def _default_system(self, tokenizer) -> str | None:
        """The system turn the checkpoint's own chat template adds when there is none."""
        if not getattr(tokenizer, "chat_template", None):
            return None
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
        opening = "<|im_start|>system\n"
        if not rendered.startswith(opening):
            return None
        end = rendered.find(self.end_of_turn, len(opening))
        return rendered[len(opening):end] if end >= 0 else None

    def render(self, turns, out, ctx, keep_earlier_reasoning=False):
        if ctx.get("default_system") is not None and turns[0].role != "system":
            turns = [Turn("system", [ctx["default_system"]], -1)] + list(turns)
        last_user = max(k for k, turn in enumerate(turns) if turn.role == "user")
        for k, turn in enumerate(turns):
            out.add("<|im_start|>" + turn.role + "\n")
            trained = turn.role == "assistant"
            if trained:
                self.render_answer(turn, out, final=k > last_user, keep_reasoning=keep_earlier_reasoning)
            else:
                out.add_content(turn.parts, trained=False)
            out.add(self.end_of_turn, trained)
            out.add("\n")

    def render_answer(self, turn, out, final: bool, keep_reasoning: bool):
        out.add_content(turn.parts, trained=True)


class Qwen3ThinkingChat(ChatMLChat):
    """MiniCPM-V 4.5 (Qwen3 hybrid thinking), as its template renders: the answer after the last
    user turn always carries `<think>\\n{reasoning}\\n</think>\\n\\n`; earlier answers lose their
    reasoning. Inference with thinking on starts generating after `<think>\\n`, with thinking
    off after the empty block, so an empty block is context and real reasoning is trained."""

    thinking = True
    think_open, think_close = "<think>\n", "\n</think>\n\n"

    def __init__(self):
        super().__init__(template_system=False)

    @staticmethod
    def split_reasoning(content: str) -> tuple[str | None, str]:
        """(reasoning, answer) of content written as `<think>...</think>answer`, split as the template does."""
        if "</think>" not in content:
            return None, content
        parts = content.split("</think>")
        return parts[0].rstrip("\n").split("<think>")[-1].lstrip("\n"), parts[-1].lstrip("\n")

    def render_answer(self, turn, out, final, keep_reasoning):
        reasoning = (turn.reasoning or "").strip("\n")
        if final or (keep_reasoning and reasoning):
            out.add(self.think_open)
            if reasoning:
                out.add(reasoning + self.think_close, trained=True)
            else:
                out.add(self.think_close)
        parts = list(turn.parts)
        if parts and isinstance(parts[0], str):
            parts[0] = parts[0].lstrip("\n")
        out.add_content(parts, trained=True)
