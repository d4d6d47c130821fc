"""Code generated from proto/npuflow/v1 by python -m npuflow.protogen."""
