"""The README is a guide (short, two commands to start) and every page it
links to exists; the commands the docs show take the flags they show."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # code is not a link
    for target in LINK.findall(text):
        if not re.match(r"[a-z][a-z0-9+.-]*:|#", target):
            yield target.split("#")[0]


def test_readme_is_at_most_300_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move the details to docs/"


def test_docs_has_a_page_per_topic():
    names = {page.name for page in PAGES}
    for topic in ("pretraining.md", "results.md", "tuning.md", "serving.md", "performance.md", "reliability.md",
                  "data_formats.md", "layout_and_contributing.md", "adaptation.md", "cine_and_selection.md"):
        assert topic in names


def test_every_relative_link_resolves_to_a_file():
    checked = 0
    for page in PAGES:
        for target in _relative_links(page):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"
            checked += 1
    assert checked > 30


def test_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](missing.md) ![b](here.png) [c](https://example.org) [d](#anchor)\n```\n[e](code.md)\n```\n")
    (tmp_path / "here.png").write_bytes(b"")
    assert list(_relative_links(page)) == ["missing.md", "here.png"]


def test_quick_start_holds_exactly_the_two_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```[a-z]*\n(.*?)```", section, flags=re.DOTALL)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    assert [command for command in commands if command] == ["make demo", "make test"]


def test_setup_long_description_is_the_readme():
    result = subprocess.run([sys.executable, "setup.py", "--long-description"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (ROOT / "README.md").read_text().strip()


def test_documented_commands_take_the_flags_they_show():
    from cm_unet_keras.cli import build_parser

    parser = build_parser()
    (subparsers,) = [action for action in parser._actions if hasattr(action, "choices") and action.choices
                     and "predict" in action.choices]
    flags = {name: {option for action in command._actions for option in action.option_strings}
             for name, command in subparsers.choices.items()}
    shown = 0
    for page in PAGES:
        text = page.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            if line.startswith("#"):  # headings name commands still to come
                continue
            for name, rest in re.findall(r"cm-unet ([a-z]+)([^`\n]*)", line):
                assert name in flags, f"{page.name}: no command cm-unet {name}"
                for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", re.split(r"#|&&|\|", rest)[0]):
                    assert flag in flags[name], f"{page.name}: cm-unet {name} has no {flag}"
                    shown += 1
    assert shown > 50


def _cli_flags():
    """{command: its long options} and the top-level options, read from
    cm-unet's parser (building it imports no TensorFlow)."""
    from cm_unet_keras.cli import build_parser

    parser = build_parser()
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    commands = {name: [option for action in command._actions for option in action.option_strings
                       if option.startswith("--") and option != "--help"]
                for name, command in subparsers.choices.items()}
    top = [option for action in parser._actions for option in action.option_strings
           if option.startswith("--") and option != "--help"]
    return commands, top


def _undocumented(text, commands):
    """'command: flag' for each command without a `### `cm-unet COMMAND``
    section in `text`, and each flag missing from its command's section."""
    sections = dict(re.findall(r"^### `cm-unet ([a-z-]+)`\n(.*?)(?=^#{1,3} |\Z)", text, flags=re.M | re.S))
    missing = []
    for command, flags in commands.items():
        if command not in sections:
            missing.append(f"{command}: no section")
            continue
        missing += [f"{command}: {flag}" for flag in flags
                    if not re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", sections[command])]
    return missing


def test_usage_documents_every_command_and_flag():
    commands, top = _cli_flags()
    assert {"predict", "select", "finetune"} <= set(commands) and "--video" in commands["predict"]
    text = (ROOT / "docs" / "usage.md").read_text()
    missing = _undocumented(text, commands)
    missing += [f"cm-unet {flag}" for flag in top if flag not in text]
    assert not missing, "docs/usage.md lacks (add each to its command's section): " + ", ".join(missing)


def test_usage_check_catches_a_missing_command_and_flag():
    text = "### `cm-unet predict`\n\n`--model`, `--out-dir`\n\n### `cm-unet select`\n\n`--count`\n"
    commands = {"predict": ["--model", "--out"], "select": ["--count"], "annotate": ["--port"]}
    assert _undocumented(text, commands) == ["predict: --out", "annotate: no section"]
