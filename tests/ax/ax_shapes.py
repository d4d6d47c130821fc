"""The AX export the tests use: the default model with prefill chunks of 32 and a 256-entry KV cache."""
AX_ID = "smollm2-135m-instruct"
PREFILL, KV = 32, 256
