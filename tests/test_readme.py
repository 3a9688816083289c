"""The README's commands run what they say: every experiment command names a program and a
config file (with its variant) that exist, and every --config.KEY it overrides is a key of that
config. (The studies themselves take minutes; the tests run them small elsewhere.)"""

import os
import re
import runpy
import shlex

import pytest

from tests.conftest import ROOT


def readme_commands() -> list[list[str]]:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read().replace("\\\n", " ")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    commands = []
    for line in lines:
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if len(words) > 1 and words[0] == "python" and words[1].startswith("experiments/"):
                commands.append(words[1:])
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_experiment_commands():
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c)[:60])
def test_each_readme_command_names_real_files_and_keys(command):
    from hpjax.programs import CONFIGS, PROGRAMS

    script = os.path.join(ROOT, command[0])
    assert os.path.isfile(script), command[0]
    program = os.path.basename(script)[:-3].replace("_", "-")
    assert program in PROGRAMS, program
    given = [w.split("=", 1)[1] for w in command if w.startswith("--config=")]
    path, _, variant = (given[-1] if given else "").partition(":")
    path = os.path.join(ROOT, path) if path else os.path.join(CONFIGS, PROGRAMS[program].config)
    assert os.path.isfile(path), path
    get_config = runpy.run_path(path)["get_config"]
    config = get_config(variant) if variant else get_config()
    for word in command:
        if word.startswith("--config."):
            node = config
            for part in word.split("=", 1)[0][len("--config.") :].split("."):
                assert part in node, f"{word}: no key {part!r} in {path}"
                node = node[part]
    assert any(w.startswith("--workdir") for w in command)
