"""The job commands the docs show are accepted by the jobs: every ``python jobs/<job>.py
...`` line of a fenced code block in README.md, docs/ and infra/README.md goes through
the job's own parser and config loader (``--print-config``, as infra/validate.py does for
the RayJob entrypoints). A renamed flag or config key fails here, not on a user's
machine."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "README.md"]
_spec = importlib.util.spec_from_file_location("infra_validate", ROOT / "infra" / "validate.py")
validate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validate)

COMMAND = re.compile(r"python (jobs/\w+\.py)(.*)")
NO_PRINT_CONFIG = {"jobs/export.py"}
"""Jobs without a config (no --print-config): their flags are covered by their tests."""


def documented_commands(text: str) -> list[list[str]]:
    """argv (``python jobs/X.py ...``) of each job command in the fenced code blocks of
    ``text``; continuation lines joined, a shell loop's ``$var`` read as 0; lines with a
    placeholder (``...``, ``<job>``) left out."""
    commands = []
    for block in re.findall(r"^```[\w-]*\n(.*?)^```", text, re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            found = COMMAND.search(line)
            if found is None or "..." in line or "<" in found.group(0):
                continue
            rest = re.sub(r"\$\{?\w+\}?", "0", found.group(2))
            commands.append(["python", found.group(1), *shlex.split(rest)])
    return commands


CASES = [
    pytest.param(argv, id=f"{doc.relative_to(ROOT)}:{k}:{argv[1]}")
    for doc in DOCS
    for k, argv in enumerate(documented_commands(doc.read_text()))
    if argv[1] not in NO_PRINT_CONFIG
]


def test_the_docs_show_every_job():
    shown = {argv[1] for argv in (c.values[0] for c in CASES)}
    jobs = {f"jobs/{p.name}" for p in (ROOT / "jobs").glob("*.py") if p.stem != "__init__"}
    assert shown == jobs - NO_PRINT_CONFIG - {"jobs/demo.py", "jobs/config_reference.py"}


@pytest.mark.parametrize("argv", CASES)
def test_a_documented_command_is_accepted(argv):
    validate.job_config("docs", argv)


def test_a_wrong_key_in_a_documented_command_fails():
    block = ".venv/bin/python jobs/pretrain.py --data d --output o \\\n  train.max_step=5\n"
    [argv] = documented_commands(f"```bash\n{block}```\n")
    assert argv[1:] == ["jobs/pretrain.py", "--data", "d", "--output", "o", "train.max_step=5"]
    with pytest.raises(validate.ManifestError, match="max_steps"):
        validate.job_config("docs", argv)
