/* wk_template: the model family's chat template, rendered straight to tokens.
 *
 * Families: Gemma (<start_of_turn>role\n...<end_of_turn>\n, system folded into the
 * first user turn, "model" for assistant), ChatML (Qwen2: <|im_start|>role\n...
 * <|im_end|>\n), Llama 3 (<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>).
 * The family comes from tokenizer.chat_template when present, else the arch.
 *
 * Template markup becomes special tokens; message content is tokenized with
 * parse_special off, so a user typing "<end_of_turn>" gets literal text, never a
 * control token. Plain template text adjacent to content is tokenized together
 * with it, so the result equals tokenizing the whole rendered string with
 * llama.cpp's special-token partitioning.
 *
 * Tool calls in assistant turns and tool results: ChatML follows Qwen2.5's
 * template (each call as <tool_call>\n{"name": N, "arguments": A}\n</tool_call>
 * after the content; consecutive tool results in one user turn, each in
 * <tool_response>\n...\n</tool_response>); Llama 3 follows Llama 3.1's (a call is
 * {"name": N, "parameters": A}; results in the ipython role); Gemma, which has no
 * tool format of its own, uses ChatML's tags as text inside its turns. */
#ifndef WK_TEMPLATE_H
#define WK_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "worker/wk_gguf.h"
#include "worker/wk_tok.h"

typedef enum wk_template_family {
    WK_TEMPLATE_GEMMA = 1,
    WK_TEMPLATE_CHATML = 2,
    WK_TEMPLATE_LLAMA3 = 3,
} wk_template_family;

typedef struct wk_chat_msg {
    const char *role;    // "system", "developer", "user", "assistant", "tool"
    const char *content; // UTF-8, content_len bytes
    size_t content_len;
    const proto_call *calls; // [n_calls] assistant: tool calls (name, JSON arguments)
    int n_calls;
} wk_chat_msg;

/* The family for this model (from g's metadata and arch). */
wk_template_family wk_template_detect(const wk_gguf *g, const char *arch);
const char *wk_template_name(wk_template_family f);

/* Renders msgs plus the assistant generation prompt into tokens (BOS included when
 * the model adds one). *out is malloc'd (caller frees), *n_out its length.
 * 0, -ENOMEM, or -EINVAL with err set (e.g. a role the family cannot express). */
int wk_template_render(wk_template_family f, const wk_tok *t, const wk_chat_msg *msgs, int n_msgs, int32_t **out,
                       int *n_out, char *err, size_t errlen);

#endif
