"""The training entry point's thread settings: OpenMP's wait policy is chosen before torch loads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Records OMP_WAIT_POLICY at the moment torch is first imported, then runs the entry point on a missing
# config (it loads torch before it reports the config error).
PROBE = """
import importlib.abc, os, sys
seen = []
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Hook())
from omni_grpo.train import main
code = main(["--check", "--config", "/nonexistent/run.yaml"])
print("torch saw", seen, "exit", code)
"""


def _probe(policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("policy, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_training_loads_torch_with_a_passive_openmp_wait(policy, expected):
    """Without a policy in the environment torch loads with PASSIVE (idle threads sleep instead of spinning
    against other processes); a policy the user set is kept."""
    assert _probe(policy) == f"torch saw ['{expected}'] exit 2"
