"""The shared OpenAI conformance checker passes in full against the running stack."""
import subprocess
import sys

import pytest

from e2e_stack import SHARED

pytestmark = pytest.mark.e2e


def test_oai_conformance_passes_in_full(stack):
    script = SHARED / "conformance" / "oai_conformance.py"
    assert script.is_file(), f"{script} missing"
    r = subprocess.run([sys.executable, str(script), "--base-url", stack.base_url],
                       capture_output=True, text=True, timeout=600)
    print(r.stdout[-4000:], r.stderr[-2000:])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].endswith(" 0 failed")
