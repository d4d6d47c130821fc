"""The stack the chat page's tests (and docs/screenshot.py) run against: the default model on one
thread, behind an API key, gRPC off."""

KEY = "sk-webui-test"
CONFIG = """
[server]
port = {port}
run_dir = "{run_dir}"
grpc_port = 0
api_keys = ["%s"]

[[models]]
id = "smollm2-135m-instruct"
threads = 1
context_length = 2048
""" % KEY
