/* fuzz_template.c - libFuzzer target for the chat-template parser and
 * interpreter, and the tokenizer_config helper (make fuzz).
 *
 * Copyright (c) the libquant authors.  MIT license. */
#include "libquant.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char msgs[] =
		"[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\",\"content\":\"hi {{x}}\"},"
		"{\"role\":\"assistant\",\"content\":\"ok\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1}}}]},"
		"{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part\"}]}]";
	struct lq_error e;
	struct lq_template *t = NULL;
	if (lq_template_compile(&t, (const char *)data, size, &e) == 0) {
		struct lq_template_vars v;
		memset(&v, 0, sizeof v);
		v.bos_token = "<s>";
		v.eos_token = "</s>";
		v.add_generation_prompt = 1;
		v.tools_json = "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}]";
		v.now = 1721952000;
		v.max_output = 1 << 20;
		char *out = NULL;
		size_t n = 0;
		if (lq_template_render(t, msgs, sizeof msgs - 1, &v, &out, &n, &e) == 0 && strlen(out) > n)
			abort();
		free(out);
	}
	lq_template_free(t);
	/* the same bytes as a tokenizer_config.json */
	struct lq_chat_config cfg;
	(void)lq_chat_config_parse(&cfg, (const char *)data, size, 0, &e);
	lq_chat_config_release(&cfg);
	return 0;
}
