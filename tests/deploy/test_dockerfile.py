"""The image definition: hadolint clean, non-root, and the build context kept small."""

from __future__ import annotations

from tests.deploy.tools import ROOT, run, tool


def test_hadolint_finds_nothing() -> None:
    result = run([tool("hadolint"), "--failure-threshold", "info", "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\nUSER root\n")
    result = run([tool("hadolint"), str(bad)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest


def test_image_runs_as_an_unprivileged_user() -> None:
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [words[1] for words in lines if words and words[0] == "USER"]
    assert users, "no USER instruction"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_build_context_leaves_out_local_state_and_secrets() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".services", ".git", ".env"} <= ignored
