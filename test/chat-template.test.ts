// Chat templates render as transformers renders them (Python's jinja2) where @huggingface/jinja
// differs: Python's str.strip/lstrip/rstrip with characters and jinja2's trim(chars), which the
// library ignored (it stripped all whitespace, so Qwen3's template dropped the answer's
// indentation). Expected strings were rendered by jinja2 3.1.6 in transformers' environment
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChatTemplateError, TextTokenizer, type ChatMessage } from '../src/formats/tokenizer.js';
import { writeByteLevelTokenizer } from './helpers/byte-level-tokenizer.js';
import { tmpDir } from './helpers/fixtures.js';

/** Qwen3's chat template as published with Qwen/Qwen3-0.6B (April 2025; llama.cpp keeps it as
 *  models/templates/Qwen-Qwen3-0.6B.jinja), verbatim. */
const QWEN3 = String.raw`{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}`;

/** A model directory with the test tokenizer and `template` as its chat_template.jinja. */
function withTemplate(template: string): { tok: TextTokenizer; file: string } {
  const dir = tmpDir('chat-template');
  writeByteLevelTokenizer(dir);
  const file = path.join(dir, 'chat_template.jinja');
  fs.writeFileSync(file, template);
  return { tok: TextTokenizer.load(dir)!, file };
}

describe('chat templates', () => {
  it("Qwen3's template keeps an answer's indentation and its reasoning's spaces, as jinja2", () => {
    const { tok } = withTemplate(QWEN3);
    const messages: ChatMessage[] = [
      { role: 'system', content: 'You write Python.' },
      { role: 'user', content: 'Print 0 to 2.' },
      { role: 'assistant', content: '<think>\n  A loop.\n</think>\n\n    for i in range(3):\n        print(i)\n' },
      { role: 'user', content: '\n  Now indent it more.' },
      { role: 'assistant', content: '<think>\n\n  Four more spaces.\n\n</think>\n\n        for i in range(3):\n            print(i)\n' },
    ];
    // (the library alone gave "assistant\nfor i in range(3)" and "<think>\nFour more spaces.")
    expect(tok.applyChatTemplate(messages.slice(0, 4))).toBe(
      '<|im_start|>system\nYou write Python.<|im_end|>\n<|im_start|>user\nPrint 0 to 2.<|im_end|>\n<|im_start|>assistant\n    for i in range(3):\n        print(i)\n<|im_end|>\n<|im_start|>user\n\n  Now indent it more.<|im_end|>\n<|im_start|>assistant\n',
    );
    expect(tok.applyChatTemplate(messages, false)).toBe(
      '<|im_start|>system\nYou write Python.<|im_end|>\n<|im_start|>user\nPrint 0 to 2.<|im_end|>\n<|im_start|>assistant\n    for i in range(3):\n        print(i)\n<|im_end|>\n<|im_start|>user\n\n  Now indent it more.<|im_end|>\n<|im_start|>assistant\n<think>\n  Four more spaces.\n</think>\n\n        for i in range(3):\n            print(i)\n<|im_end|>\n',
    );
  });

  it('strip, lstrip and rstrip take characters (by code point), trim too; without them, or with none, whitespace goes', () => {
    const { tok } = withTemplate(
      "{% macro tail(s) %}{{ s.rstrip(' \\n') }}{% endmacro %}" +
        "{% for m in messages %}[{{ m.content.strip('\\n') }}|{{ m.content.lstrip('\\n ') }}|{{ tail(m.content) }}" +
        "|{{ m.content|trim('\\n') }}|{{ m.content|trim(chars='\\n') }}|{{ m.content|trim }}|{{ m.content.strip() }}|{{ m.content.strip(none) }}" +
        "|{{ {'k': m.content.lstrip('\\n')}['k'] }}|{{ m.content.strip('\\u2603😀\\n') }}]\n{% endfor %}",
    );
    const messages = [{ role: 'user', content: '\n  a ☃\n' }, { role: 'user', content: '😀☃x ☃😀\n' }];
    expect(tok.applyChatTemplate(messages)).toBe(
      '[  a ☃|a ☃\n|\n  a ☃|  a ☃|  a ☃|a ☃|a ☃|a ☃|  a ☃\n|  a ]\n[😀☃x ☃😀|😀☃x ☃😀\n|😀☃x ☃😀|😀☃x ☃😀|😀☃x ☃😀|😀☃x ☃😀|😀☃x ☃😀|😀☃x ☃😀|😀☃x ☃😀\n|x ]\n',
    );
  });

  it('a strip on what is not a string fails the conversation, naming the template file', () => {
    const { tok, file } = withTemplate("{{ messages[0].missing.lstrip('\\n') }}");
    const messages = [{ role: 'user', content: 'hi' }];
    expect(() => tok.applyChatTemplate(messages)).toThrow(ChatTemplateError);
    expect(() => tok.applyChatTemplate(messages)).toThrow(`the chat template (${file}) fails on these messages: lstrip() called on an undefined value, not a string`);
    const chars = withTemplate("{{ messages[0].content.strip(3) }}");
    expect(() => chars.tok.applyChatTemplate(messages)).toThrow(`the chat template (${chars.file}) fails on these messages: strip() argument must be a string or none, not number`);
  });
});
