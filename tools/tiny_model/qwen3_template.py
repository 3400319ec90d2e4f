"""ChatML with Qwen3 hybrid thinking, the chat template of the tiny 4.5 and 4.6: answers after
the last user turn carry a think block (empty when there is no reasoning), earlier ones lose
theirs; the generation prompt opens the block (thinking on) or writes it empty
(enable_thinking=False)."""


def qwen3_thinking_template(content: str = "m['content']", prelude: str = "") -> str:
    """The template; `content`: the Jinja expression for a message's text (4.6 renders a list of
    image / text items through a macro that `prelude` defines)."""
    return (
        prelude
        + "{%- set ns = namespace(last_user=-1) -%}"
        "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'assistant' -%}"
        "{%- set content = " + content + " -%}"
        "{%- set reasoning = m['reasoning_content'] if m['reasoning_content'] is string else '' -%}"
        "{%- if m['reasoning_content'] is not string and '</think>' in content -%}"
        "{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') -%}"
        "{%- set content = content.split('</think>')[-1].lstrip('\n') -%}"
        "{%- endif -%}"
        "{%- if loop.index0 > ns.last_user -%}"
        "{{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n')"
        " + '<|im_end|>\n' -}}"
        "{%- else -%}{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' -}}{%- endif -%}"
        "{%- else -%}{{- '<|im_start|>' + m['role'] + '\n' + " + content + " + '<|im_end|>\n' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
        "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\n\n</think>\n\n' -}}"
        "{%- else -%}{{- '<think>\n' -}}{%- endif -%}{%- endif -%}"
    )
