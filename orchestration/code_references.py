"""Source-code references on every asset: the file and line that define it, as links to the git host
at the checked-out commit when the repository has a GitHub or GitLab remote, else as local paths."""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]  # the repository's root: orchestration/ sits in it
_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?([^:/]+):(.+)$")  # git@github.com:owner/repo.git

# Dagster marks both functions beta; they are its documented way to show code in the UI.
warnings.filterwarnings("ignore", category=dg.BetaWarning,
                        message=".*(with_source_code_references|link_code_references_to_git|CodeReferencesMetadataValue"
                                "|LocalFileCodeReference|UrlCodeReference|AnchorBasedFilePathMapping).*")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def web_url(remote: str) -> str | None:
    """The browsable https URL of a GitHub or GitLab remote, without credentials; None for any other host."""
    remote = remote.strip()
    if "://" in remote:
        scheme, rest = remote.split("://", 1)
        host_path = rest.rsplit("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest  # drop user:token@
    elif m := _SCP_LIKE.match(remote):
        host_path = f"{m.group(1)}/{m.group(2)}"
    else:
        return None
    host_path = host_path.removesuffix("/").removesuffix(".git")
    host = host_path.split("/", 1)[0].split(":", 1)[0]
    if not any(h in host for h in ("github", "gitlab")) or "/" not in host_path:
        return None
    return f"https://{host}/{host_path.split('/', 1)[1]}"


def git_location() -> tuple[str, str, str] | None:
    """(web URL, commit, where ROOT sits in the repository) of the origin remote, when Dagster can link to it."""
    remote = _git("config", "--get", "remote.origin.url")
    url = web_url(remote) if remote else None
    commit = _git("rev-parse", "HEAD") if url else None
    return (url, commit, _git("rev-parse", "--show-prefix") or "") if url and commit else None


def with_code_references(assets: list) -> list:
    """The assets with their defining file and line; linked to git when git_location() finds a remote."""
    referenced = dg.with_source_code_references(assets)
    location = git_location()
    if location is None:
        return list(referenced)
    url, commit, prefix = location
    return list(dg.link_code_references_to_git(
        referenced, git_url=url, git_branch=commit,  # the commit, so a link shows the code that is running
        file_path_mapping=dg.AnchorBasedFilePathMapping(local_file_anchor=ROOT / "pyproject.toml",
                                                        file_anchor_path_in_repository=f"{prefix}pyproject.toml")))
