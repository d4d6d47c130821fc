"""The HTTP gateway: OpenAI-compatible API over the tokenizer and llm_worker processes."""
from npuflow.gateway.app import create_app
from npuflow.gateway.run import run_gateway

__all__ = ["create_app", "run_gateway"]
