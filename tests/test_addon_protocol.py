"""The add-on's view of the /v1 protocol and the server's are the same: one fixture set, both sides."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.server import schemas
from blender_addon.core import protocol

FIXTURES = Path(__file__).parent / "fixtures" / "protocol"
PAIRS = [("job_in", protocol.JobIn, schemas.JobIn), ("job_out", protocol.JobOut, schemas.JobOut),
         ("health", protocol.Health, schemas.Health)]


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.mark.parametrize("name, ours, theirs", PAIRS, ids=[p[0] for p in PAIRS])
def test_same_fields_on_both_sides(name, ours, theirs):
    assert {f.name for f in dataclasses.fields(ours)} == set(theirs.model_fields)
    assert set(load(name)) == set(theirs.model_fields), "the fixture shows every field"


@pytest.mark.parametrize("name, ours, theirs", PAIRS, ids=[p[0] for p in PAIRS])
def test_fixture_parses_on_both_sides(name, ours, theirs):
    body = load(name)
    server_side = theirs.model_validate(body).model_dump(mode="json")
    addon_side = ours.from_json(body)
    assert server_side == body
    if name == "job_in":
        assert addon_side.to_json() == body
        assert addon_side.mode == "depth" and addon_side.depths[0].startswith(b"\x89PNG")
    if name == "job_out":
        assert addon_side.preview.startswith(b"\x89PNG") and addon_side.seeds == (42, 43)


def test_job_in_json_is_accepted_by_the_server_model():
    job = protocol.JobIn(prompt="x", width=64, height=64)
    assert schemas.JobIn.model_validate(job.to_json()).prompt == "x"


def test_core_imports_neither_bpy_nor_the_backend():
    code = ("import sys, blender_addon.core.protocol, blender_addon.core.clients, blender_addon.core.jobs, "
            "blender_addon.core.png; bad = [m for m in ('bpy', 'torch', 'backend', 'PIL') if m in sys.modules]; "
            "print(*bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
