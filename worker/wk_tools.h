/* wk_tools: tool calling in the worker.
 *
 * Three parts, one per stage of a request with tools:
 *   - wk_tools_prompt: the tool definitions as the model family expects them in
 *     its system prompt (Qwen 2.5's "# Tools" block with <tools> JSON lines and
 *     the <tool_call> format, used for ChatML and Gemma; Llama 3.1's JSON
 *     function-calling instructions);
 *   - wk_tools_grammar: the language the output must stay in. A call is
 *       ChatML, Gemma: <tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call>
 *                      (several separated by "\n" when parallel calls are allowed)
 *       Llama 3:       {"name": "NAME", "parameters": ARGS}   (one call)
 *     with NAME one of the offered tools and ARGS valid under that tool's
 *     parameters schema (wk_jsonschema). "required" is calls only; a named choice
 *     is one call to that tool; "auto" is free text that may turn into calls once
 *     the call markup appears (ChatML, Gemma), or text not starting with '{'
 *     (Llama 3), or calls; "none" is free text without the call markup;
 *   - wk_tcx: reads the output back into message content and calls (name, then
 *     argument fragments as they arrive). It relies on the grammar: the markup is
 *     exactly as above, and the markup's closing text cannot occur inside ARGS. */
#ifndef WK_TOOLS_H
#define WK_TOOLS_H

#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "worker/wk_grammar.h"
#include "worker/wk_template.h"

/* The system-prompt text offering sub's tools (malloc'd, NUL-terminated; caller
 * frees), or NULL on ENOMEM. */
char *wk_tools_prompt(wk_template_family f, const proto_submit *sub);

/* 1 when sub's tools constrain the output: a tool_choice other than none, or
 * none for a family whose call markup can be kept out of free text (all but
 * Llama 3, whose calls are plain JSON). */
int wk_tools_constrain(wk_template_family f, const proto_submit *sub);

/* A sealed grammar for sub's tools and tool_choice (wk_tools_constrain true). 0,
 * -ENOMEM, or -EINVAL with err saying why and param naming the tool's
 * parameters field. */
int wk_tools_grammar(wk_template_family f, const proto_submit *sub, wk_grammar **out, char *err, size_t errlen,
                     char *param, size_t paramlen);

/* Output reader. emit receives content (call == 0) or the k-th call (call = k,
 * 1-based): its name once (text empty), then its argument fragments. */
typedef void (*wk_tcx_emit_fn)(void *ud, uint32_t call, const char *name, const char *text, size_t len);
typedef struct wk_tcx wk_tcx;

wk_tcx *wk_tcx_new(wk_template_family f); // NULL on ENOMEM
void wk_tcx_free(wk_tcx *x);              // NULL is a no-op
/* Feeds the next output bytes (whole UTF-8 characters); final: the output ends
 * here (everything held back goes out). 0 or -ENOMEM. */
int wk_tcx_feed(wk_tcx *x, const char *p, size_t n, int final, wk_tcx_emit_fn emit, void *ud);
/* Calls seen so far. */
int wk_tcx_calls(const wk_tcx *x);

#endif
