"""OpenAI's wire shapes, which every layer may import: request bodies (`protocol`), typed
errors (`errors`), response chunks and usage (`chunks`), their JSON (`format`), and the tool
prompt, grammar and parser (`tool_*`). Nothing here does I/O or knows the engine."""
