"""csdfd.cpumem: glibc keeps freed memory, so repeated steps stop faulting their pages in.

The page-fault test runs each allocator state in a fresh interpreter (the setting is for the
whole process and is not undone) and checks both: it fails when keeping changes nothing, and
when glibc's defaults do not fault in the first place (then it would test nothing).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from test_train import _cfg, bench  # noqa: F401 - bench is a fixture

from csdfd import cpumem, trainer

GLIBC = platform.libc_ver()[0] == "glibc"

# A step-like loop: 64 MiB in, 64 MiB out, freed, 16 times; the page faults of each of the last
# 6 steps (kept, the heap settles within the first few steps: its free chunks fall into place).
_LOOP = """
import json, resource, sys, torch
from csdfd.cpumem import keep_freed_memory
why = keep_freed_memory() if sys.argv[1] == "keep" else "system"
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_step = []
for _ in range(16):
    f0 = faults()
    x = torch.ones(16 << 20)
    y = x * 2
    del x, y
    per_step.append(faults() - f0)
print(json.dumps({"why": why, "tail": per_step[-6:]}))
"""


def _faults_per_step(state: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _LOOP, state], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_kept_memory_stops_the_page_faults_of_repeated_steps():
    """Under glibc's defaults a 64 MiB tensor is mmap-served and unmapped on free, so every
    step faults each of its pages in again; once kept, the steps reuse the heap's pages."""
    system, kept = _faults_per_step("system"), _faults_per_step("keep")
    assert kept["why"] is None
    # 128 MiB touched per step: 32768 faults with 4 KiB pages, still 64 with 2 MiB huge pages
    assert min(system["tail"]) >= 64, system
    assert max(kept["tail"]) <= 4, kept


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_keep_is_idempotent(monkeypatch):
    monkeypatch.setattr(cpumem, "_applied", False)
    assert cpumem.keep_freed_memory() is None
    assert cpumem.keep_freed_memory() is None


def test_other_c_libraries_are_left_alone_and_say_why(monkeypatch):
    monkeypatch.setattr(cpumem, "_applied", False)
    monkeypatch.setattr(cpumem.platform, "libc_ver", lambda: ("", ""))
    why = cpumem.keep_freed_memory()
    assert why is not None and "glibc" in why
    assert not cpumem._applied


@pytest.mark.parametrize("keep", [True, False])
def test_trainer_keeps_memory_on_cpu_unless_told_not_to(keep, bench, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda: calls.append(1))
    trainer.Trainer(_cfg(keep_cpu_memory=keep), tmp_path, bench, quiet=True)
    assert len(calls) == int(keep)
    assert f"keep_cpu_memory: {str(keep).lower()}" in (tmp_path / "config.yaml").read_text()
